"""Numbers reported in the D-DFFNet paper (ICME 2023), as (MAE, F-beta, IoU) per test set.

Copied from the paper's tables (see docs/REPRODUCTION.md, section 10); None where the paper has no entry.
Set names are the data registry's: EBD-1305 is the paper's "EBD(1305)".
"""
from __future__ import annotations

PAPER_SETS = ("CUHK-TE-1", "DUT-TE", "CTCUG", "EBD", "EBD-1305")
Scores = tuple[float, float, float]

# Table I: trained on CUHK-TR-1.
TABLE_I: dict[str, tuple[Scores | None, ...]] = {
    "DBDF": ((.292, .806, .549), (.384, .754, .519), (.360, .668, .438), (.389, .603, .435), (.507, .590, .357)),
    "LBP": ((.154, .917, .755), (.199, .873, .783), (.291, .732, .638), (.334, .705, .611), (.353, .757, .620)),
    "HiFST": ((.223, .803, .743), (.313, .839, .640), (.274, .775, .618), (.376, .603, .498), (.501, .594, .407)),
    "BTBNet": ((.110, .949, .914), (.196, .861, .803), (.177, .809, .762), None, None),
    "BTBNet2": ((.085, .935, .908), (.145, .873, .837), None, None, None),
    "CENet": ((.061, .945, .932), (.141, .869, .833), (.117, .845, .820), (.072, .810, .899), (.062, .945, .924)),
    "BR2Net": ((.059, .966, .927), (.083, .943, .893), (.140, .834, .788), (.087, .813, .880), (.063, .948, .924)),
    "DD": ((.045, .966, .941), (.074, .935, .903), (.155, .797, .775), (.118, .812, .842), (.048, .950, .940)),
    "DefuNet": (None, (.085, .952, .889), (.132, .828, .798), None, None),
    "IS2CNet": ((.049, .964, .937), (.142, .868, .831), (.112, .858, .826), (.070, .809, .901), (.062, .944, .923)),
    "DFFNet": ((.039, .971, .947), (.072, .938, .903), (.082, .879, .868), (.091, .823, .872), (.038, .961, .951)),
    "R-DFFNet": ((.041, .968, .945), (.091, .920, .881), (.082, .895, .871), (.088, .819, .879), (.045, .957, .944)),
    "D-DFFNet": ((.036, .973, .951), (.070, .939, .906), (.074, .892, .878), (.084, .826, .882), (.038, .963, .952)),
}

# Table II: trained on CUHK-TR-1 & DUT-TR (LOCAL reports MAE only).
TABLE_II: dict[str, tuple[Scores | None, ...]] = {
    "AENet": ((.049, .964, .935), (.120, .886, .855), (.114, .845, .823), (.069, .811, .901), (.053, .946, .933)),
    "EFENet": ((.052, .958, .935), (.091, .927, .883), (.116, .837, .827), (.113, .794, .852), (.069, .928, .919)),
    "D-DFFNet": ((.039, .970, .947), (.060, .950, .919), (.075, .893, .878), (.094, .825, .868), (.036, .963, .954)),
}

TABLES = {"I": TABLE_I, "II": TABLE_II}
TABLE_TITLES = {"I": "Table I, trained on CUHK-TR-1", "II": "Table II, trained on CUHK-TR-1 & DUT-TR"}


def paper_row(method: str, table: str = "I") -> dict[str, Scores] | None:
    """{set: (MAE, F-beta, IoU)} of `method` in Table `table` (case-insensitive name), None if absent."""
    if table not in TABLES:
        raise ValueError(f"unknown paper table {table!r}; choose one of {', '.join(TABLES)}")
    for name, row in TABLES[table].items():
        if name.lower() == method.lower():
            return {s: scores for s, scores in zip(PAPER_SETS, row) if scores is not None}
    return None

