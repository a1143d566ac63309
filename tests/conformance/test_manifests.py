"""Check (1) of issue 13: every manifest in the repository of an upstream kind against the upstream CRD (its schema and
its CEL rules), and Kaip's admission of it against upstream's; and check (3) on those manifests: every single-point
mutation that upstream rejects, Kaip refuses too."""

from __future__ import annotations

import pytest

from conformance.harness import (
    GENERATED_GROUPS,
    Manifest,
    checked_versions,
    crd_file,
    kaip_validate,
    manifests_of,
    mutation_leaks,
    object_schema,
    upstream_kinds,
    upstream_rejects,
)
from kaip.api.kinds import KindInfo

CASES = [(info, m) for info in upstream_kinds() if crd_file(info) is not None for m in manifests_of(info)]


def _version(info: KindInfo, m: Manifest) -> str:
    version = m.doc["apiVersion"].rpartition("/")[2]
    assert version in checked_versions(info), f"{m.source}: {info.kind} {version} is not served by upstream's CRD"
    return version


@pytest.mark.parametrize(("info", "manifest"), CASES, ids=[f"{i.kind}:{m.source}" for i, m in CASES])
def test_manifest_against_upstream_crd(info: KindInfo, manifest: Manifest) -> None:
    version = _version(info, manifest)
    upstream = upstream_rejects(info, version, manifest.doc)  # the structural schema, then every CEL rule
    accepted, err = kaip_validate(info, manifest.doc)
    if manifest.example and "invalid" not in manifest.source:
        # An example is meant to be applied as it is: both upstream (schema and CEL rules) and Kaip take it.
        assert upstream == [], f"{manifest.source}: upstream's CRD rejects it: {upstream}"
        assert err is None, f"{manifest.source}: Kaip refuses it: {err}"
    elif upstream:
        # A deliberately invalid manifest that upstream's schema rejects: Kaip must not accept it.
        assert err is not None, f"{manifest.source}: Kaip accepts a document upstream rejects: {upstream}"
    if accepted is not None:
        assert upstream == [], f"{manifest.source}: Kaip accepts it but upstream's CRD rejects it: {upstream}"


def test_every_kind_with_a_crd_has_a_schema_for_its_served_versions() -> None:
    for info in upstream_kinds():
        if crd_file(info) is None:
            continue
        assert checked_versions(info), f"{info.key}: Kaip serves {info.versions}, upstream's CRD none of them"
        for version in checked_versions(info):
            assert object_schema(info, version)["type"] == "object"


def _valid_both_ways(info: KindInfo, m: Manifest) -> bool:
    version = m.doc["apiVersion"].rpartition("/")[2]
    return version in checked_versions(info) and not upstream_rejects(info, version, m.doc) \
        and kaip_validate(info, m.doc)[1] is None


# Seeds: every manifest that upstream's schema and Kaip both take, of the kinds whose generated checks are on.
MUTATION_SEEDS = [(i, m) for i, m in CASES if i.group in GENERATED_GROUPS and _valid_both_ways(i, m)]


@pytest.mark.parametrize(("info", "manifest"), MUTATION_SEEDS, ids=[f"{i.kind}:{m.source}" for i, m in MUTATION_SEEDS])
def test_kaip_refuses_what_upstream_rejects_mutations_of_manifests(info: KindInfo, manifest: Manifest) -> None:
    tried, leaks = mutation_leaks(info, _version(info, manifest), manifest.doc)
    assert tried > 0, f"{manifest.source}: no mutation upstream rejects"
    assert not leaks, f"{manifest.source}: Kaip accepts {len(leaks)} of {tried} documents upstream rejects:\n" + \
        "\n".join(leaks)


def test_every_api_module_imports() -> None:
    """Kinds are discovered by importing every module of kaip.api; one that fails to import hides its kinds."""
    from conformance.harness import IMPORT_ERRORS, registered_kinds

    registered_kinds()
    assert IMPORT_ERRORS == {}
