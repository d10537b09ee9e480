"""The checklist reads complete: every item of SECURITY.md Part B (1–145) has a test named after
it in this folder, or a reason in NOT_APPLICABLE.md, never both."""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).parent
ITEMS = set(range(1, 146))


def items_with_tests() -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for path in sorted(HERE.glob("test_b*.py")):
        for match in re.finditer(r"^(?:async )?def (test_b(\d+)_(\d{3})_\w+)", path.read_text(), re.M):
            found.setdefault(int(match[3]), []).append(match[1])
    return found


def not_applicable_items() -> set[int]:
    text = (HERE / "NOT_APPLICABLE.md").read_text()
    table = text.split("## Not applicable", 1)[1].split("\n## ", 1)[0]
    return {int(n) for n in re.findall(r"^\| (\d{3}) \|", table, re.M)}


def test_every_item_is_tested_or_explained() -> None:
    tested, skipped = set(items_with_tests()), not_applicable_items()
    assert not (tested & skipped), f"both tested and listed as not applicable: {sorted(tested & skipped)}"
    assert tested | skipped == ITEMS, f"neither tested nor explained: {sorted(ITEMS - tested - skipped)}"


def test_test_names_put_items_in_their_section() -> None:
    """`test_b7_104_…` is in B.7: the section in a name matches the checklist's numbering."""
    sections = {
        1: (1, 22),
        2: (23, 49),
        3: (50, 70),
        4: (71, 77),
        5: (78, 92),
        6: (93, 103),
        7: (104, 114),
        8: (115, 118),
        9: (119, 125),
        10: (126, 130),
        11: (131, 136),
        12: (137, 141),
        13: (142, 145),
    }
    for item, names in items_with_tests().items():
        for name in names:
            match = re.match(r"test_b(\d+)_", name)
            assert match is not None
            section = int(match[1])
            low, high = sections[section]
            assert low <= item <= high, name
