"""The code cannot be talked into other SQL: no SQL built from strings, sort keys are fixed.

`set_config('app.current_tenant_id', other, true)` works for any role mid-transaction, so the
only way for a request to reach another tenant is to inject SQL. These tests read the source
(with `ast`, not regexes) of everything that runs against the database and fail on:

- `text()`, `literal_column()` or `exec_driver_sql()` called with anything but a constant;
- `execute()` (and friends) called with an f-string, `%`-formatted, `.format()`-ed or
  concatenated string, directly or through a variable;
- a session-level `SET` or `set_config(…, false)`, which would outlive the transaction on a
  pooled connection, or `app.current_tenant_id` set anywhere but `app/database/tenant_context.py`;
- `order_by()` with a key that is not a fixed column (no `getattr`, `text`, `column`, strings
  or a caller's parameter; a lookup in an UPPER_CASE constant mapping is the whitelist form).

Constant-only interpolations are listed in ALLOWED_INTERPOLATIONS with the reason each is safe;
an entry that no longer matches anything fails the test too, so the list cannot rot.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BACKEND = Path(__file__).resolve().parents[2]
SCANNED = [BACKEND / "app", BACKEND / "alembic" / "env.py"]

CONSTANT_ONLY_CALLS = {"text", "literal_column", "exec_driver_sql"}
EXECUTING_CALLS = {"execute", "executemany", "exec_driver_sql", "scalar", "scalars", "stream"}
FORBIDDEN_SORT_CALLS = {"getattr", "text", "literal_column", "column"}

# (path relative to backend/, source of the flagged expression) -> why it is safe.
ALLOWED_INTERPOLATIONS: dict[tuple[str, str], str] = {
    (
        "app/database/tenant_context.py",
        "f\"SELECT set_config('role', '{ADMIN_ROLE}', true)\"",
    ): "ADMIN_ROLE is a module constant (the role name), never input; built once at import.",
    (
        "alembic/env.py",
        "f\"ALTER ROLE {RUNTIME_ROLE} WITH LOGIN PASSWORD '{verifier}'\"",
    ): "RUNTIME_ROLE is a constant; verifier is a SCRAM-SHA-256 verifier computed locally "
    "(base64, '$' and ':' only, never a quote). ALTER ROLE takes no bind parameters.",
    (
        "app/services/vector_indexes.py",
        "create_index_sql(plan.tenant_id, plan.table)",
    ): "DDL takes no bind parameters; the statement is fixed text plus a uuid.UUID's hex and "
    "canonical text forms (hex digits and dashes), from the catalog's own counts, and the "
    "names of one of the module's two constant IndexedTable specs (documents, chunks).",
    (
        "app/services/vector_indexes.py",
        'f"SELECT tenant_id, count(*) FROM {table.table} WHERE {table.searchable}"  # noqa: S608\n'
        '        " GROUP BY tenant_id"',
    ): "table is one of the module's constant IndexedTable specs (documents, chunks): fixed "
    "table, column and predicate text, never input.",
    (
        "app/services/vector_indexes.py",
        'f"SELECT {table.column} FROM {table.table} WHERE tenant_id = :tenant"  # noqa: S608\n'
        '        f" AND {table.searchable} ORDER BY random() LIMIT :rows"',
    ): "table is a constant IndexedTable spec; the tenant and the count are bound.",
    (
        "app/services/vector_indexes.py",
        "comment_index_sql(plan.index_name, probe_comment(probe, plan.searchable_rows))",
    ): "DDL takes no bind parameters; comment_index_sql refuses any name but one of our "
    "per-tenant index names and any comment but letters, digits, '_', '@', '.', '=' and spaces "
    "(probe_comment writes ints and a float), so no quote can reach the statement.",
    (
        "app/services/vector_indexes.py",
        'f"SELECT id FROM (SELECT id, {table.column} <=> CAST(:query AS vector) AS distance"'
        "  # noqa: S608\n"
        '        f" FROM {table.table} WHERE tenant_id = :tenant AND {table.searchable}'
        ' OFFSET 0)"\n'
        '        " AS scored ORDER BY distance, id LIMIT 10"',
    ): "table is a constant IndexedTable spec; the query vector and the tenant are bound.",
    (
        "app/services/vector_indexes.py",
        "table.search_sql",
    ): "search_sql is a constant of the IndexedTable spec (the search function's call with bound "
    "parameters).",
    (
        "app/services/vector_indexes.py",
        "drop_index_sql(plan.index_name)",
    ): "DDL takes no bind parameters; drop_index_sql refuses any name but INDEX_PREFIX plus a "
    "uuid's 32 hex digits.",
    (
        "alembic/env.py",
        "f\"SET lock_timeout = '{LOCK_TIMEOUT}'\"",
    ): "LOCK_TIMEOUT is a module constant; the migration connection is never pooled for requests.",
    (
        "app/database/engine.py",
        "settings_sql",
    ): "Built once per engine by set_locally_calls from session_settings: setting names and "
    "values from the Settings object (validated ints, constants), each quoted with '' doubling.",
    (
        "app/services/audit_integrity.py",
        "_ROWS_SQL.format(where=where)",
    ): "Built once at import from module constants: the WHERE clause is '' or a fixed "
    "'WHERE tenant_id = :tenant_id' (the tenant itself is a bind parameter).",
}


@dataclass(frozen=True)
class Finding:
    """One suspicious expression in the source."""

    path: str
    line: int
    source: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.source}"


def _python_files() -> Iterator[Path]:
    for root in SCANNED:
        yield from [root] if root.is_file() else sorted(root.rglob("*.py"))


def _call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _is_built_string(node: ast.AST) -> bool:
    """An f-string with holes, `"…" % x`, `"…".format(x)` or a concatenation with a string."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(part, ast.FormattedValue) for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        sides = (node.left, node.right)
        return any(
            isinstance(side, ast.JoinedStr)
            or (isinstance(side, ast.Constant) and isinstance(side.value, str))
            or _is_built_string(side)
            for side in sides
        )
    if isinstance(node, ast.Call) and _call_name(node) == "format":
        target = node.func.value if isinstance(node.func, ast.Attribute) else None
        return isinstance(target, ast.Constant | ast.JoinedStr)
    return False


def _is_constant_string(node: ast.AST, constants: set[str]) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return True
    if isinstance(node, ast.Name) and node.id in constants:
        return True
    return (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Add)
        and _is_constant_string(node.left, constants)
        and _is_constant_string(node.right, constants)
    )


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str, source: str, tree: ast.Module) -> None:
        self.path = path
        self.source = source
        self.findings: list[Finding] = []
        self.sort_calls: list[str] = []
        # Module-level names bound to a plain string constant (safe to pass to text()).
        self.constants = {
            target.id
            for statement in tree.body
            if isinstance(statement, ast.Assign | ast.AnnAssign)
            and statement.value is not None
            and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str)
            for target in (
                statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            )
            if isinstance(target, ast.Name)
        }
        self.built_names: list[set[str]] = [self._built_names(tree.body)]
        self.parameters: list[set[str]] = [set()]

    def _built_names(self, body: list[ast.stmt]) -> set[str]:
        names = set()
        for node in body:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Assign) and _is_built_string(inner.value):
                    names |= {t.id for t in inner.targets if isinstance(t, ast.Name)}
        return names

    def _flag(self, node: ast.AST, rule: str) -> None:
        segment = ast.get_source_segment(self.source, node) or ""
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), segment, rule))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        self.parameters.append({argument.arg for argument in arguments})
        self.built_names.append(self._built_names(node.body))
        self.generic_visit(node)
        self.parameters.pop()
        self.built_names.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815  (ast.NodeVisitor's naming)

    def _is_built(self, node: ast.AST) -> bool:
        if _is_built_string(node):
            return True
        return isinstance(node, ast.Name) and any(node.id in names for names in self.built_names)

    def visit_Call(self, node: ast.Call) -> None:
        name = _call_name(node)
        first = node.args[0] if node.args else None
        if first is not None and name in CONSTANT_ONLY_CALLS:
            if not _is_constant_string(first, self.constants):
                self._flag(first, f"{name}() with SQL that is not a constant")
        elif first is not None and name in EXECUTING_CALLS and self._is_built(first):
            self._flag(first, f"{name}() with SQL built from strings")
        if name == "order_by":
            self.sort_calls.append(f"{self.path}:{node.lineno}")
            for argument in node.args:
                self._check_sort_key(argument)
        self.generic_visit(node)

    def _check_sort_key(self, argument: ast.AST) -> None:
        for inner in ast.walk(argument):
            if isinstance(inner, ast.Call) and _call_name(inner) in FORBIDDEN_SORT_CALLS:
                self._flag(argument, "order_by() with a key looked up by name")
            elif isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                self._flag(argument, "order_by() with a string key")
            elif isinstance(inner, ast.Subscript) and not (
                isinstance(inner.value, ast.Name) and inner.value.id.isupper()
            ):
                self._flag(argument, "order_by() key indexed outside a constant whitelist")
            elif isinstance(inner, ast.Name) and inner.id in self.parameters[-1]:
                self._flag(argument, "order_by() with a caller-supplied key")

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            if re.match(r"\s*SET\s+(?!LOCAL\b)", node.value, re.IGNORECASE) and (
                self.path.startswith("app/")
            ):
                self._flag(node, "session-level SET (outlives the transaction)")
            if re.search(r"set_config\([^)]*,\s*false\s*\)", node.value, re.IGNORECASE):
                self._flag(node, "set_config(…, false) (outlives the transaction)")
            if (
                "app.current_tenant_id" in node.value
                and "set_config" in node.value
                and self.path != "app/database/tenant_context.py"
            ):
                self._flag(node, "tenant context set outside app/database/tenant_context.py")


def _scanners() -> list[_Scanner]:
    scanners = []
    for file in _python_files():
        source = file.read_text()
        tree = ast.parse(source)
        scanner = _Scanner(str(file.relative_to(BACKEND)), source, tree)
        scanner.visit(tree)
        scanners.append(scanner)
    return scanners


def _scan() -> list[Finding]:
    return [finding for scanner in _scanners() for finding in scanner.findings]


def _unexplained(findings: list[Finding]) -> list[str]:
    return [str(f) for f in findings if (f.path, f.source) not in ALLOWED_INTERPOLATIONS]


def test_no_sql_is_built_from_strings_outside_the_explained_allowlist() -> None:
    """Every interpolation into SQL in app/ (and alembic/env.py) is a listed constant-only one."""
    findings = _scan()
    assert _unexplained(findings) == []
    used = {(f.path, f.source) for f in findings}
    assert [key for key in ALLOWED_INTERPOLATIONS if key not in used] == []


def test_services_order_only_by_fixed_columns_and_context_is_set_in_one_place() -> None:
    """No allowlist for these: every order_by key is a fixed column, context is set in one place."""
    scanners = _scanners()
    sort_calls = [call for scanner in scanners for call in scanner.sort_calls]
    assert any(call.startswith("app/services/") for call in sort_calls)  # the rule has work
    no_exceptions = ("order_by", "session-level", "outlives", "tenant context")
    findings = [
        str(finding)
        for scanner in scanners
        for finding in scanner.findings
        if any(rule in finding.rule for rule in no_exceptions)
    ]
    assert findings == []


@pytest.mark.parametrize(
    ("snippet", "rule"),
    [
        ('text(f"SELECT * FROM documents ORDER BY {sort}")', "not a constant"),
        ("session.execute(\"SELECT * FROM users WHERE email = '%s'\" % email)", "built"),
        ('query = "DELETE FROM x WHERE id = {}".format(i)\nsession.execute(query)', "built"),
        ('session.execute("SELECT " + column)', "built"),
        ("conn.exec_driver_sql(statement)", "not a constant"),
        ("select(Document).order_by(getattr(Document, sort))", "looked up by name"),
        ('select(Document).order_by(text("created_at"))', "looked up by name"),
        ("select(Document).order_by(Document.__table__.c[sort])", "outside a constant"),
        ("def f(sort):\n    return select(Document).order_by(sort)", "caller-supplied"),
        ("text(\"SET statement_timeout = '0'\")", "session-level SET"),
        ("text(\"SELECT set_config('app.current_tenant_id', :t, false)\")", "outlives"),
    ],
)
def test_scanner_catches_injection_prone_code(snippet: str, rule: str) -> None:
    """The scanner itself: each of these unsafe shapes is reported (so the tests above can fail)."""
    tree = ast.parse(snippet)
    scanner = _Scanner("app/services/example.py", snippet, tree)
    scanner.visit(tree)
    assert any(rule in finding.rule for finding in scanner.findings), scanner.findings


@pytest.mark.parametrize(
    "snippet",
    [
        'text("SELECT 1")',
        'QUERY = "SELECT 1"\ntext(QUERY)',
        "session.execute(select(Document).where(Document.id == document_id))",
        "select(Document).order_by(Document.created_at.desc(), Document.id.desc())",
        "select(Document).order_by(SORT_COLUMNS[sort])",
        'sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))',
        "text(\"SELECT set_config('x', :v, true)\")",
    ],
)
def test_scanner_accepts_safe_code(snippet: str) -> None:
    """…and the safe shapes the code base uses are not reported."""
    tree = ast.parse(snippet)
    scanner = _Scanner("app/services/example.py", snippet, tree)
    scanner.visit(tree)
    assert scanner.findings == []
