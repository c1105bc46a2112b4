"""A labelled corpus for text-search quality: 200 short clinical-style notes, each with a
question about it phrased in other (lay) words. Written for the tests, built
deterministically from templates: 50 conditions x 4 care settings.

The clinical and the lay wording share few words on purpose ("myocardial infarction" against
"heart attack"), so a hit needs the model's sense of meaning, not word overlap. The four notes
of one condition differ only by their setting, so telling them apart is the hard part.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# (clinical wording of the condition and its plan, lay wording of the condition)
CONDITIONS = [
    ("acute myocardial infarction with ST elevation, taken for primary PCI", "a heart attack"),
    (
        "community-acquired pneumonia of the right lower lobe, on ceftriaxone",
        "a chest infection in the lung",
    ),
    (
        "type 2 diabetes mellitus with HbA1c 9.2%, metformin titrated",
        "high blood sugar from diabetes",
    ),
    ("essential hypertension, BP 168/102, amlodipine started", "high blood pressure"),
    (
        "acute appendicitis, scheduled for laparoscopic appendectomy",
        "an inflamed appendix needing surgery",
    ),
    ("distal radius fracture after a fall, closed reduction and cast", "a broken wrist"),
    ("migraine without aura, triptan prescribed", "bad recurring headaches"),
    ("major depressive disorder, sertraline 50 mg started", "depression and low mood"),
    ("generalised anxiety disorder, referred for CBT", "constant worry and nervousness"),
    (
        "asthma exacerbation, nebulised salbutamol and oral prednisolone",
        "an asthma attack with wheezing",
    ),
    ("COPD exacerbation with increased sputum, doxycycline", "a lung disease flare-up in a smoker"),
    (
        "urinary tract infection, nitrofurantoin for five days",
        "a bladder infection with burning urine",
    ),
    ("iron deficiency anaemia, ferrous sulfate", "low iron making them tired and pale"),
    ("hypothyroidism with raised TSH, levothyroxine 50 mcg", "an underactive thyroid gland"),
    (
        "atrial fibrillation with rapid ventricular response, apixaban",
        "an irregular fast heartbeat",
    ),
    ("deep vein thrombosis of the left calf, rivaroxaban", "a blood clot in the leg"),
    ("pulmonary embolism on CT angiography, anticoagulated", "a blood clot in the lungs"),
    ("ischaemic stroke with left hemiparesis, thrombolysed", "a stroke with weakness on one side"),
    ("gastro-oesophageal reflux disease, omeprazole", "heartburn and acid coming up"),
    ("peptic ulcer with melaena, endoscopy arranged", "a bleeding stomach ulcer"),
    ("acute pancreatitis with raised lipase, IV fluids", "an inflamed pancreas with belly pain"),
    (
        "biliary colic from gallstones, cholecystectomy planned",
        "gallstone pain needing gallbladder removal",
    ),
    ("cellulitis of the right shin, flucloxacillin", "a skin infection on the leg"),
    ("contact dermatitis of both hands, topical steroid", "an itchy rash from touching something"),
    ("psoriasis plaques on elbows and knees, started methotrexate", "scaly red skin patches"),
    (
        "osteoarthritis of the right knee, physiotherapy and paracetamol",
        "wear-and-tear knee joint pain",
    ),
    (
        "rheumatoid arthritis with synovitis of the hands, methotrexate",
        "an autoimmune disease swelling the finger joints",
    ),
    (
        "acute gout of the first metatarsophalangeal joint, colchicine",
        "a sudden painful swollen big toe",
    ),
    (
        "lumbar disc herniation with sciatica, analgesia and physiotherapy",
        "a slipped disc with pain down the leg",
    ),
    ("chronic kidney disease stage 3, ACE inhibitor", "kidneys that are not working well"),
    (
        "renal colic from a 5 mm ureteric stone, tamsulosin",
        "a kidney stone causing severe side pain",
    ),
    (
        "benign prostatic hyperplasia with nocturia, tamsulosin",
        "an enlarged prostate making them pee at night",
    ),
    ("pre-eclampsia at 34 weeks, magnesium sulfate", "dangerous high blood pressure in pregnancy"),
    ("gestational diabetes, diet-controlled", "diabetes that started during pregnancy"),
    ("otitis media in the left ear, amoxicillin", "an ear infection"),
    ("streptococcal pharyngitis, penicillin V", "a strep throat"),
    ("acute sinusitis with facial pain, nasal steroid", "a blocked sinus infection"),
    ("conjunctivitis, chloramphenicol eye drops", "pink eye"),
    ("glaucoma with raised intraocular pressure, latanoprost", "high pressure inside the eye"),
    (
        "cataract of the right eye, listed for phacoemulsification",
        "a cloudy lens needing eye surgery",
    ),
    (
        "concussion after a sports collision, graded return to play",
        "a head injury from playing sport",
    ),
    ("alcohol withdrawal with tremor, chlordiazepoxide", "shakes from stopping drinking"),
    ("opioid use disorder, started buprenorphine", "addiction to painkillers or heroin"),
    (
        "anaphylaxis to peanuts, adrenaline auto-injector prescribed",
        "a severe nut allergy reaction",
    ),
    (
        "shingles in a thoracic dermatome, aciclovir",
        "a painful blistering rash on one side of the body",
    ),
    ("influenza A with fever and myalgia, oseltamivir", "the flu with aches and fever"),
    ("COVID-19 with mild symptoms, isolation advised", "a coronavirus infection"),
    (
        "heart failure with reduced ejection fraction, furosemide",
        "a weak heart with fluid build-up",
    ),
    ("osteoporosis with a vertebral fracture, alendronate", "thin brittle bones"),
    ("insomnia, sleep hygiene and short course of zopiclone", "trouble sleeping at night"),
]

# (clinical wording of the setting, lay wording of it)
SETTINGS = [
    ("Emergency department attendance", "an emergency room visit"),
    ("Telehealth follow-up consultation", "a video call check-up"),
    ("Pre-operative assessment clinic", "a check before an operation"),
    ("Home visit by the community nurse", "a nurse visiting at home"),
]


@dataclass(frozen=True)
class LabelledNote:
    """A note, the question whose answer it is, and its position in the corpus."""

    index: int
    note: str
    question: str


def clinical_corpus(seed: int = 19) -> list[LabelledNote]:
    """The 200 notes and questions (the same ones for the same seed)."""
    rng = random.Random(seed)
    notes = []
    for condition, lay_condition in CONDITIONS:
        for setting, lay_setting in SETTINGS:
            age = rng.randint(19, 88)
            sex = rng.choice(["man", "woman"])
            note = (
                f"{setting}. {age}-year-old {sex} assessed for {condition}. "
                f"Observations recorded, history and examination documented, safety-netting given."
            )
            question = f"Which record is about {lay_condition}, seen during {lay_setting}?"
            notes.append(LabelledNote(len(notes), note, question))
    return notes
