"""A study's distances table (auditor.reproduction.records) and the rescore on it (rescore).

The table round-trips exactly and byte-identically; a hostile or mismatched table is one
line naming the file, line and field (exit 2 through the CLI); the rescore judges each
suspect against many reference sets drawn from the innocent pool, never against itself.
"""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest

from auditor.errors import BadInputError
from auditor.reproduction import records
from auditor.reproduction.records import ModelRecord, StudyTable, read_table, write_table
from auditor.reproduction.rescore import flag_rates, innocent_pool, rescore
from auditor.verdict_tests import DEFAULT
from t2i_audit import main

M, J = 30, 4


def _table(
    seed: int = 0, same: int = 20, shifted: int = 6, infringing: int = 6, sampled: int = 0
) -> StudyTable:
    """A simulated study: per-key difficulty, a model-wide shift per model, seed noise;
    infringers copy a third of the keys (distances near 0.05 there); `sampled` innocents of the
    references' recipe audited again with a noisier sampler (the same model, its own token)."""
    rng = np.random.default_rng(seed)
    keys = rng.normal(math.log(0.25), 0.3, M)
    models: dict[str, ModelRecord] = {}

    def add(
        name: str,
        role: str,
        group: str,
        rho: float = 0.0,
        shift: float = 0.0,
        of: str = "",
        noise: float = 0.18,
    ) -> None:
        d = np.exp(keys[:, None] + rng.normal(0, 0.05) + shift + rng.normal(0, noise, (M, J)))
        if rho:
            copied = rng.choice(M, M // 3, replace=False)
            d[copied] = rng.uniform(0.03, 0.07, (len(copied), J))
        models[name] = ModelRecord(
            name=name,
            role=role,
            group=group,
            rho=rho,
            digest=models[of].digest if of else f"{len(models):064x}",
            seed_distances=tuple(tuple(float(x) for x in row) for row in d),
            seeds=tuple(tuple(1000 * k + j for j in range(J)) for k in range(M)),
            token="c" * 64 if of else "b" * 64,
            sampling="noisy" if of else "",
        )

    for i in range(8):
        add(f"ref-{i:02d}", "reference", "reference recipe")
    for i in range(same):
        add(f"innocent-same-{i:02d}", "innocent", "reference recipe")
    for i in range(shifted):
        add(f"innocent-steps-{i:02d}", "innocent", "steps-500", shift=0.05)
    for i in range(infringing):
        add(f"infringing-{i:02d}", "infringing", "reference recipe", rho=0.3)
    for i in range(sampled):
        add(
            f"innocent-same-{i:02d}+noisy",
            "innocent",
            "sampling noisy",
            of=f"innocent-same-{i:02d}",
            noise=0.3,
        )
    add("base", "base", "base", shift=0.2)
    return StudyTable(
        study="sim",
        keyset_digest="a" * 64,
        audit_token="b" * 64,
        distance_name="l2",
        delta0=0.15,
        key_ids=tuple(f"k{k:02d}" for k in range(M)),
        models=models,
    )


def test_the_table_round_trips_exactly_and_byte_identically(tmp_path):
    table = _table(sampled=2)
    first = write_table(tmp_path / "a.csv.gz", table).read_bytes()
    assert read_table(tmp_path / "a.csv.gz") == table
    assert write_table(tmp_path / "b.csv.gz", read_table(tmp_path / "a.csv.gz")).read_bytes() == first


def _rewrite(tmp_path, edit) -> str:
    path = tmp_path / "t.csv.gz"
    write_table(path, _table(same=2, shifted=1, infringing=1))
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    lines = edit(lines)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(BadInputError) as error:
        read_table(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


def _field(lines, row, column, value):
    cells = lines[row].split(",")
    cells[records.COLUMNS.index(column)] = value
    lines[row] = ",".join(cells)
    return lines


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda ls: [ls[0].replace("distance_name", "distance_kind"), *ls[1:]], "field 'header'"),
        (lambda ls: _field(ls, 1, "schema", "t2i-auditor.study-distances/v0"), "field 'schema'"),
        (lambda ls: _field(ls, 5, "keyset_digest", "c" * 64), "field 'keyset_digest'"),
        (lambda ls: _field(ls, 5, "audit_token", "d" * 64), "one value per model"),
        (
            lambda ls: [
                ls[0],
                *(_field([x], 0, "audit_token", "d" * 64)[0] for x in ls[1 : 1 + M * J]),
                *ls[1 + M * J :],
            ],
            "share one token",
        ),  # fmt: skip
        (lambda ls: _field(ls, 1, "sampling", "../x"), "field 'sampling'"),
        (lambda ls: _field(ls, 2, "model_digest", "e" * 64), "one value per model"),
        (lambda ls: _field(ls, 2, "distance", "nan"), "field 'distance'"),
        (lambda ls: _field(ls, 2, "distance", "-0.1"), "field 'distance'"),
        (lambda ls: _field(ls, 2, "seed", "1e3"), "field 'seed'"),
        (lambda ls: _field(ls, 2, "seed", "0"), "each seed once"),
        (lambda ls: _field(ls, 2, "role", "judge"), "field 'role'"),
        (lambda ls: _field(ls, 2, "key_id", "k99"), "field 'key_id'"),
        (lambda ls: _field(ls, 1, "group", "a\u202egroup"), "field 'group'"),
        (lambda ls: _field(ls, 2, "model", "../x"), "field 'model'"),
        (lambda ls: [ls[0], *ls[1 + J :]], "keys"),  # one model lacks key 0
        (lambda ls: [ls[0], *ls[2:]], "seeds per key"),  # one (model, key) lacks a seed
        (lambda ls: [ls[0], ls[1] + ",extra", *ls[2:]], "field 'row'"),
        (lambda ls: ls[:1], "no rows"),
    ],
)
def test_a_bent_table_is_one_line_naming_the_field(tmp_path, edit, says):
    assert says in _rewrite(tmp_path, edit)


def test_not_a_table_and_a_decompression_bomb_are_refused(tmp_path, monkeypatch):
    plain = tmp_path / "plain.csv.gz"
    plain.write_text("model,key\n")
    with pytest.raises(BadInputError, match="not a gzip"):
        read_table(plain)
    with pytest.raises(BadInputError, match="no such file"):
        read_table(tmp_path / "missing.csv.gz")
    monkeypatch.setattr(records, "MAX_BYTES", 1 << 16)
    bomb = tmp_path / "bomb.csv.gz"
    bomb.write_bytes(gzip.compress(b"0" * (1 << 20)))
    with pytest.raises(BadInputError, match="decompresses to more than"):
        read_table(bomb)


def test_the_cli_refuses_a_bad_table_or_test_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(b"not gzip")
    argv = ["reproduce", "--study", "calibration", "--out", str(tmp_path / "out")]
    assert main([*argv, "--rescore", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.csv.gz" in err and "Traceback" not in err
    good = write_table(tmp_path / "good.csv.gz", _table(same=2, shifted=1, infringing=1))
    assert main([*argv, "--rescore", str(good), "--test", "t2i-auditor.model-test/v0"]) == 2
    assert "--test" in capsys.readouterr().err
    assert main(["reproduce", "--study", "paper", "--rescore", str(good)]) == 2
    assert "--study calibration" in capsys.readouterr().err


def test_the_first_keys_are_the_smaller_selections_audit_and_a_count_out_of_range_is_refused(
    tmp_path, capsys
):
    """`--keys K` scores the audit a K-key selection makes: every model's first K keys, seeds kept."""
    table = _table(same=6, shifted=1, infringing=1)
    cut = records.first_keys(table, 10)
    assert cut.key_ids == table.key_ids[:10] and cut.models.keys() == table.models.keys()
    for name, model in cut.models.items():
        assert model.seed_distances == table.models[name].seed_distances[:10]
        assert model.seeds == table.models[name].seeds[:10] and model.token == table.models[name].token
    assert records.first_keys(table, M) is table
    good = write_table(tmp_path / "good.csv.gz", table)
    argv = ["reproduce", "--study", "calibration", "--rescore", str(good), "--reference-sets", "3"]
    for bad in ("0", str(M + 1)):
        assert main([*argv, "--out", str(tmp_path / "out"), "--keys", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err and ("--keys" in err or "positive" in err)
    assert main([*argv, "--out", str(tmp_path / "ok"), "--keys", "10"]) == 0
    assert f"the first 10 of its {M} keys" in (tmp_path / "ok" / "rescore" / "rescore.md").read_text()


def test_a_set_never_judges_its_own_member_and_every_other_model_is_judged():
    """Also not by content: a model audited again with another sampler sits out the sets that hold it."""
    table = _table(same=6, shifted=2, infringing=2, sampled=2)
    pool = {m.name for m in innocent_pool(table)}
    assert len(pool) == 14 and "base" not in pool and not any(n.startswith("infringing") for n in pool)
    verdicts = flag_rates(table, DEFAULT, n_references=8, sets=30, min_references=5)
    flagged, _ = verdicts[0.01]
    for name, over_sets in flagged.items():
        missing = np.isnan(over_sets).sum()
        own = name.split("+")[0]
        assert (missing > 0) == (own in pool), name  # a pool model sits out the sets that hold it
        assert missing < 30
    assert np.array_equal(np.isnan(flagged["innocent-same-00+noisy"]), np.isnan(flagged["innocent-same-00"]))


def test_the_rescore_gives_level_and_power_rows_per_reference_count():
    results = rescore(_table(), DEFAULT, sets=40, reference_counts=(5, 8, 16, 40))
    rows = results[0.01]
    assert {r.n_references for r in rows} == {5, 8, 16}  # 40 needs a pool of more than 40
    same = [r for r in rows if r.group == "reference recipe" and r.n_references == 8]
    copy = [r for r in rows if r.group == "infringing: reference recipe" and r.n_references == 8]
    assert len(same) == 1 and len(copy) == 1 and copy[0].rho == 0.3
    assert same[0].models == 20 and 0.0 <= same[0].low <= same[0].mean <= same[0].high
    assert copy[0].mean > same[0].mean
    assert results[0.05][0].n_references == 5


def test_a_pool_model_drawn_into_every_set_is_left_out_not_a_crash():
    """With 5 references from a pool of 6, some innocent may sit in every set: it is never judged and
    is counted out of its group, rather than turning the group's rate into NaN."""
    table = _table(same=1, shifted=0, infringing=1)  # pool: 8 references + 1 innocent
    results = rescore(table, DEFAULT, sets=3, reference_counts=(8,))
    rows = {r.group: r for r in results[0.01]}
    assert rows["infringing: reference recipe"].models == 1
    same = rows.get("reference recipe")
    assert same is None or (same.models == 1 and not math.isnan(same.mean))
