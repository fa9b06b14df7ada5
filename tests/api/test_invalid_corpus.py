"""The invalid corpus: every file under corpus/invalid/ is loaded next to the valid base fleet and must
produce exactly the errors listed in its trailing ``# expect:`` lines: file, line, document, field, message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.api import SourceFile, SpecErrors, load_fleet

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted((CORPUS / "invalid").glob("*.yaml"))
EXPECT = "# expect: "


def _base() -> list[SourceFile]:
    return [SourceFile(p.relative_to(CORPUS).as_posix(), p.read_bytes()) for p in (CORPUS / "base").glob("*.yaml")]


def test_corpus_is_large_enough():
    assert len(CASES) >= 20


def test_base_fleet_is_valid():
    tree = load_fleet(_base())
    assert tree.counts() == {"Fleet": 0, "DeviceProfile": 2, "DeviceGroup": 2, "Model": 1, "Rollout": 1}


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_invalid_document_gives_exact_errors(case: Path):
    content = case.read_bytes()
    expected = [line.removeprefix(EXPECT) for line in content.decode().splitlines() if line.startswith(EXPECT)]
    assert expected, f"{case.name} lists no '# expect:' lines"

    with pytest.raises(SpecErrors) as raised:
        load_fleet([*_base(), SourceFile(case.name, content)])

    assert [str(error) for error in raised.value.errors] == expected
