"""Checks (2), (3) and (4) of issue 13, property-based, for the kinds in GENERATED_GROUPS: documents generated
from the upstream CRD schema (hypothesis-jsonschema, bounded in size) are accepted by Kaip or refused at a field the
docs list; documents that use only the fields Kaip implements are accepted (bar EXTRA_RULES), stored with
upstream's defaults, and every mutation that breaks upstream's schema is refused. Every document Kaip accepts also
satisfies the CRD's CEL rules, and one that breaks a rule is refused where the rule reports it (test_cel.py breaks
each rule on purpose: the generator seldom does)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from conformance.cel import Violation
from conformance.harness import (
    body_schema,
    causes,
    cel_refusal_explained,
    cel_violations,
    checked_versions,
    default_mismatches,
    drop_fields,
    empty_object_probes,
    envelope,
    generated_kinds,
    kaip_validate,
    manifests_of,
    matrix_cached,
    object_schema,
    refusal_explained,
    upstream_errors,
    upstream_rejects,
    with_path,
)
from conformance.mutations import mutants
from kaip.api.kinds import KindInfo

# The storage version only: Kaip's schema is written for it (other versions are converted; their manifests are
# checked in test_manifests.py).
CASES = [(info, info.version) for info in generated_kinds() if info.version in checked_versions(info)]
IDS = [f"{i.kind}/{v}" for i, v in CASES]
# Depth of optional fields generated, counted from the body (spec = 1, spec.predictor = 2, ...; a list item is a
# level); deep enough to reach container fields of an InferenceService's predictor.
FULL_DEPTH = 4
IMPLEMENTED_DEPTH = 6
# Small on purpose: the whole conformance suite stays under a minute on two shared cores.
# No shrinking: a failing example is reported as drawn (shrinking documents of this size takes minutes).
EXAMPLES = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])


def _explained(info: KindInfo, version: str, err: Any, *, allow_refused_fields: bool,
               broken: Sequence[Violation] = ()) -> list[str]:
    """The causes of Kaip's refusal that nothing documents: neither a refused field or EXTRA_RULES, nor one of the
    CEL violations `broken` (reported at or under the value the rule was evaluated on)."""
    assert 400 <= err.code < 500, f"Kaip answered {err.code}: {err}"
    return [f"{c.get('field')}: {c.get('message')}" for c in causes(err)
            if not refusal_explained(info, version, c, allow_refused_fields=allow_refused_fields)
            and not cel_refusal_explained(info, c, broken)]


def _cel_holds_where_accepted(info: KindInfo, version: str, doc: dict[str, Any], err: Any) -> list[Violation]:
    """The CEL rules `doc` breaks; Kaip must not have accepted it if there are any."""
    broken = cel_violations(info, version, doc)
    assert err is None or 400 <= err.code < 500, f"Kaip answered {err.code}: {err}"
    assert not (err is None and broken), f"Kaip accepts a document upstream's CEL rules reject: " \
                                         f"{[str(v) for v in broken]}"
    return broken


@pytest.mark.parametrize(("info", "version"), CASES, ids=IDS)
@EXAMPLES
@given(data=st.data())
def test_upstream_documents_accepted_or_refused_at_a_listed_field(info: KindInfo, version: str,
                                                                   data: st.DataObject) -> None:
    body = data.draw(from_schema(body_schema(info, version, FULL_DEPTH, implemented_only=False)), label="body")
    doc = envelope(info, version, body)
    assert upstream_errors(info, version, doc) == []  # the generator's bounds keep documents valid upstream
    _, err = kaip_validate(info, doc)
    broken = _cel_holds_where_accepted(info, version, doc, err)
    if err is not None:
        unexplained = _explained(info, version, err, allow_refused_fields=True, broken=broken)
        assert not unexplained, f"refused at fields not in docs/conformance.md: {unexplained}"


@pytest.mark.parametrize(("info", "version"), CASES, ids=IDS)
@EXAMPLES
@given(data=st.data())
def test_implemented_fields_accepted_defaulted_and_mutations_refused(info: KindInfo, version: str,
                                                                     data: st.DataObject) -> None:
    body = data.draw(from_schema(body_schema(info, version, IMPLEMENTED_DEPTH, implemented_only=True)),
                     label="body")
    doc = envelope(info, version, body)
    assert upstream_errors(info, version, doc) == []
    stored, err = kaip_validate(info, doc)
    for _ in range(5):  # repair: drop each field refused by a documented rule, while upstream still takes the rest
        broken = _cel_holds_where_accepted(info, version, doc, err)
        if err is None:
            break
        unexplained = _explained(info, version, err, allow_refused_fields=False, broken=broken)
        assert not unexplained, f"an implemented field refused beyond EXTRA_RULES and the CEL rules: {unexplained}"
        repaired = drop_fields(doc, [c.get("field", "") for c in causes(err)])
        if repaired is None or upstream_errors(info, version, repaired):
            return
        doc = repaired
        stored, err = kaip_validate(info, doc)
    if err is not None:
        return
    assert stored is not None
    # (4) defaulting matches upstream's `default:`s
    schema = object_schema(info, version)
    implemented = set(matrix_cached(info.key, version).implemented)
    mismatches = default_mismatches(schema, {k: v for k, v in doc.items() if k != "metadata"},
                                    {k: v for k, v in stored.items() if k != "metadata"}, implemented)
    assert not mismatches, mismatches
    # (3) Kaip never accepts what upstream rejects: a few single-point mutations of this accepted document
    candidates = list(mutants(doc, schema))
    start = data.draw(st.integers(0, len(candidates) - 1), label="mutation") if candidates else 0
    checked = 0
    for mutant in candidates[start:] + candidates[:start]:
        if checked == 3:
            break
        if not (reasons := upstream_rejects(info, version, mutant.doc)):
            continue
        checked += 1
        accepted, _ = kaip_validate(info, mutant.doc)
        assert accepted is None, f"Kaip accepts a document upstream rejects: {mutant.what}: {reasons[0]}"


SEEDED = [(info, info.version) for info in generated_kinds()]


@pytest.mark.parametrize(("info", "version"), SEEDED, ids=[f"{i.kind}/{v}" for i, v in SEEDED])
def test_defaults_on_repository_manifests_and_empty_objects(info: KindInfo, version: str) -> None:
    """(4) deterministically: the repository's manifests of the kind that Kaip accepts, and each of them with one
    absent implemented object field set to `{}`, are stored with exactly upstream's defaults."""
    schema = object_schema(info, version)
    implemented = set(matrix_cached(info.key, version).implemented)
    seeds = [m.doc for m in manifests_of(info) if m.doc["apiVersion"] == info.api_version]
    docs = [("as written", d) for d in seeds]
    docs += [probe for d in seeds for probe in empty_object_probes(schema, d, implemented)]
    checked, problems = 0, []
    for what, doc in docs:
        stored, _ = kaip_validate(info, doc)
        if stored is None:
            continue
        assert not cel_violations(info, version, doc), f"{what}: Kaip accepts it, upstream's CEL rules do not"
        checked += 1
        given = {k: v for k, v in doc.items() if k != "metadata"}
        problems += [f"{what}: {p}" for p in default_mismatches(schema, given, {k: v for k, v in stored.items()
                                                                                if k != "metadata"}, implemented)]
    assert checked > 0, f"no manifest of {info.kind} in the repository that Kaip accepts"
    assert not problems, problems


@pytest.mark.parametrize(("info", "version"), CASES, ids=IDS)
def test_generator_reaches_documents_kaip_accepts(info: KindInfo, version: str) -> None:
    """Checks (3) and (4) above act on accepted documents: the generator must reach some, or they check nothing."""
    strategy = from_schema(body_schema(info, version, IMPLEMENTED_DEPTH, implemented_only=True))
    body = find(strategy, lambda b: kaip_validate(info, envelope(info, version, b))[1] is None,
                settings=settings(EXAMPLES, max_examples=60, phases=[Phase.generate]))
    assert upstream_rejects(info, version, envelope(info, version, body)) == []


@pytest.mark.parametrize(("info", "version"), SEEDED, ids=[f"{i.kind}/{v}" for i, v in SEEDED])
def test_every_implemented_field_in_its_smallest_upstream_form(info: KindInfo, version: str) -> None:
    """Deterministic complement of the generated checks, which stop at a depth: each implemented field, added in
    its smallest upstream-valid form to each repository manifest of the kind, is accepted (or refused by a
    documented rule) and stored with upstream's defaults."""
    schema = object_schema(info, version)
    implemented = matrix_cached(info.key, version).implemented
    seeds = [m.doc for m in manifests_of(info) if m.doc["apiVersion"] == info.api_version
             and kaip_validate(info, m.doc)[1] is None]
    accepted, problems = 0, []
    for seed in seeds:
        for path in implemented:
            doc = with_path(seed, schema, path)
            if doc is None or upstream_errors(info, version, doc):
                continue
            stored, err = kaip_validate(info, doc)
            broken = cel_violations(info, version, doc)  # a smallest form may break a CEL rule: then refused
            if err is None and broken:
                problems.append(f"{path}: accepted, but upstream's CEL rules refuse it: {[str(v) for v in broken]}")
            if err is not None:
                problems += [f"{path}: refused: {c}" for c in _explained(info, version, err,
                                                                        allow_refused_fields=False, broken=broken)]
                continue
            if broken:
                continue
            accepted += 1
            problems += [f"{path}: {p}" for p in default_mismatches(
                schema, {k: v for k, v in doc.items() if k != "metadata"},
                {k: v for k, v in stored.items() if k != "metadata"}, set(implemented))]
    assert accepted > 0
    assert not problems, "\n".join(sorted(set(problems)))
