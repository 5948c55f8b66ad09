"""Extractor options: one pydantic model per method, the registry carries it, bad values are clean errors."""

import pytest

from bricks.errors import InvalidInputError
from bricks.extract import extractors, get_extractor, resolve_name
from bricks.extract.clusters import ClusterOptions
from bricks.extract.emergent import EmergentOptions
from bricks.extract.options import describe_option, option_pairs, parse_options, type_name
from bricks.extract.rare_tokens import RareTokenOptions
from bricks.extract.sparse_probe import SparseProbeOptions


def test_every_extractor_declares_an_options_model_with_descriptions():
    specs = extractors()
    assert {s.name: s.options for s in specs.values()} == {
        "emergent": EmergentOptions, "clusters": ClusterOptions, "rare_tokens": RareTokenOptions,
        "sparse_probe": SparseProbeOptions}
    for spec in specs.values():
        assert spec.reference_url.startswith("https://arxiv.org/") and spec.summary
        assert spec.options.model_config["extra"] == "forbid"
        assert all(f.description for f in spec.options.model_fields.values()), spec.name


def test_good_options_are_typed_from_text_as_the_cli_gives_them():
    opt = parse_options(ClusterOptions, "clusters", {"k": "8", "balance": "none", "zones": "true", "gain": "0.5",
                                                     "layers": "10,20"})
    assert (opt.k, opt.balance, opt.zones, opt.gain, opt.layers) == (8, None, True, 0.5, [10, 20])
    assert parse_options(ClusterOptions, "clusters", {"layers": 3}).layers == [3]
    assert parse_options(EmergentOptions, "emergent", {"labels": "fr,de", "top_pct": 2}).labels == ["fr", "de"]
    assert parse_options(EmergentOptions, "emergent", None) == EmergentOptions()


def test_a_bad_option_name_is_one_clean_error_listing_the_real_names():
    with pytest.raises(InvalidInputError, match="clusters has no option 'kk'") as e:
        parse_options(ClusterOptions, "clusters", {"kk": 3})
    assert "fix: use one of: layers, k, balance," in str(e.value)


def test_a_bad_type_names_the_option_its_type_and_default():
    with pytest.raises(InvalidInputError, match="k='eight'") as e:
        parse_options(ClusterOptions, "clusters", {"k": "eight"})
    assert "--opt k=... takes int (default 32): Clusters per layer." in str(e.value)
    with pytest.raises(InvalidInputError, match="method='magic'") as e:
        parse_options(EmergentOptions, "emergent", {"method": "magic", "top_pct": 0})
    assert "top_pct=0" in str(e.value) and "one of auto, funcscore, lape, combined" in str(e.value)


def test_type_names_read_well():
    assert type_name(int) == "int" and type_name(float | None) == "float or none"
    assert describe_option(RareTokenOptions, "layer").startswith("int or none (default none): FFN layer")


def test_rare_token_spellings_resolve_to_the_real_name():
    for spelling in ("rare_tokens", "rare-tokens", "rare-token", "rare_token", "Rare-Tokens"):
        assert resolve_name(spelling) == "rare_tokens" and get_extractor(spelling).name == "rare_tokens"
    with pytest.raises(InvalidInputError, match="fix: use one of: clusters, emergent, rare_tokens"):
        get_extractor("rare")


def test_option_pairs_read_json_else_text():
    assert option_pairs(("top-pct=0.5", "labels=fr,de", "force=true", "profile=p.pt")) == {
        "top_pct": 0.5, "labels": "fr,de", "force": True, "profile": "p.pt"}
    with pytest.raises(InvalidInputError, match="not key=value"):
        option_pairs(("nonsense",))
