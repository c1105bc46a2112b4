"""Does a SQL statement pin every tenant table it reads or writes to one tenant? (issue 22)

Citus routes a query to one shard only when every distributed table in it is filtered by its
distribution column equal to one value (or joined on it to a table that is): RLS does not
prune shards. `unpinned_tables(sql)` parses a statement with PostgreSQL's own parser (pglast)
and returns the tenant tables of each query level (each SELECT, UPDATE, DELETE, subquery) whose
distribution column is not tied, through `=` in the WHERE clause or a JOIN condition (ANDed),
to a parameter or a constant. INSERTs must list the column. Functions the statement calls
(search_documents) are checked where they are defined, not here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from pglast import ast, parse_sql
from pglast.enums import A_Expr_Kind, BoolExprType

from app.database import citus

_VALUE = ("", "")  # the node every pinned column is joined to
_DRIVER_PARAMETER = re.compile(r"%\((\w+)\)s")


def as_postgres_sql(driver_sql: str) -> str:
    """psycopg's `%(name)s` placeholders as PostgreSQL's `$n` (what the parser reads)."""
    names: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${names.setdefault(match.group(1), len(names) + 1)}"

    return _DRIVER_PARAMETER.sub(number, driver_sql).replace("%%", "%")


def unpinned_tables(driver_sql: str, distribution: dict[str, str]) -> list[str]:
    """The tenant tables a statement touches without pinning them to one tenant."""
    problems: list[str] = []
    for raw in parse_sql(as_postgres_sql(driver_sql)):
        for level in _levels(raw.stmt):
            problems += _check_level(level, distribution)
    return problems


def _children(node: Any) -> Iterator[Any]:
    if isinstance(node, tuple):
        for item in node:
            yield from _children(item)
    elif isinstance(node, ast.Node):
        for name in node:  # pglast nodes iterate over their field names
            value = getattr(node, name)
            if isinstance(value, ast.Node | tuple):
                yield value


def _levels(node: Any) -> Iterator[Any]:
    """Every SELECT/UPDATE/DELETE/INSERT in the tree (each is a query level of its own)."""
    if isinstance(node, ast.SelectStmt | ast.UpdateStmt | ast.DeleteStmt | ast.InsertStmt):
        yield node
    for child in _children(node):
        yield from _levels(child)


def _relations(from_items: Any) -> Iterator[tuple[str, str]]:
    """(table, alias) of every table named directly in a FROM list (not in subqueries)."""
    for item in from_items or ():
        if isinstance(item, ast.RangeVar):
            yield item.relname, item.alias.aliasname if item.alias else item.relname
        elif isinstance(item, ast.JoinExpr):
            yield from _relations((item.larg, item.rarg))


def _join_conditions(from_items: Any) -> Iterator[Any]:
    for item in from_items or ():
        if isinstance(item, ast.JoinExpr):
            if item.quals is not None:
                yield item.quals
            yield from _join_conditions((item.larg, item.rarg))


def _conjuncts(condition: Any) -> Iterator[Any]:
    if isinstance(condition, ast.BoolExpr) and condition.boolop == BoolExprType.AND_EXPR:
        for argument in condition.args:
            yield from _conjuncts(argument)
    elif condition is not None:
        yield condition


def _column(node: Any, tables: list[tuple[str, str]]) -> tuple[str, str] | None:
    if isinstance(node, ast.TypeCast):
        node = node.arg
    if not isinstance(node, ast.ColumnRef):
        return None
    names = [field.sval for field in node.fields if isinstance(field, ast.String)]
    if len(names) == 2:
        return names[0], names[1]
    if len(names) == 1 and len(tables) == 1:
        return tables[0][1], names[0]
    return None


def _is_value(node: Any) -> bool:
    if isinstance(node, ast.TypeCast):
        node = node.arg
    return isinstance(node, ast.ParamRef | ast.A_Const)


def _check_level(level: Any, distribution: dict[str, str]) -> list[str]:
    if isinstance(level, ast.InsertStmt):
        table = level.relation.relname
        columns = {target.name for target in level.cols or ()}
        if table in distribution and distribution[table] not in columns:
            return [f"{table} inserted without {distribution[table]}"]
        return []
    if isinstance(level, ast.SelectStmt):
        from_items, where = level.fromClause, level.whereClause
        tables = list(_relations(from_items))
    else:  # UPDATE or DELETE: the target table, plus FROM/USING
        extra = level.fromClause if isinstance(level, ast.UpdateStmt) else level.usingClause
        target = level.relation
        alias = target.alias.aliasname if target.alias else target.relname
        tables = [(target.relname, alias), *_relations(extra)]
        from_items, where = extra, level.whereClause
    tenant_tables = [(table, alias) for table, alias in tables if table in distribution]
    if not tenant_tables:
        return []
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(node: tuple[str, str]) -> tuple[str, str]:
        while parent.get(node, node) != node:
            node = parent[node]
        return node

    def union(first: tuple[str, str], second: tuple[str, str]) -> None:
        parent[find(first)] = find(second)

    conditions = [*_conjuncts(where)]
    for join in _join_conditions(from_items):
        conditions += _conjuncts(join)
    for condition in conditions:
        if not isinstance(condition, ast.A_Expr) or condition.name[0].sval != "=":
            continue
        left = _column(condition.lexpr, tables)
        if condition.kind == A_Expr_Kind.AEXPR_IN:
            if left and len(condition.rexpr) == 1 and _is_value(condition.rexpr[0]):
                union(left, _VALUE)
            continue
        if condition.kind != A_Expr_Kind.AEXPR_OP:
            continue
        right = _column(condition.rexpr, tables)
        if left and right:
            union(left, right)
        elif left and _is_value(condition.rexpr):
            union(left, _VALUE)
        elif right and _is_value(condition.lexpr):
            union(right, _VALUE)
    return [
        f"{table} (as {alias}) not filtered by {distribution[table]}"
        for table, alias in tenant_tables
        if find((alias, distribution[table])) != find(_VALUE)
    ]


def distribution_columns(tables: dict[str, citus.DistributedTable]) -> dict[str, str]:
    """{table: distribution column} from `citus.distributed_tables`."""
    return {name: table.column for name, table in tables.items()}
