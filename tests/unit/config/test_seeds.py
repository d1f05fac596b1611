"""Several seeds (emprior.config.seeds): validation, the branch names and each branch's config."""

import pytest

from emprior.config.loading import job_config, load_config
from emprior.config.seeds import branch_seed, branches, coerce_seeds, seeded, seeds_of, split_branch
from emprior.core.errors import ConfigError
from emprior.core.provenance import config_digest


def test_snakemake_command_line_values_become_ints():
    # `--config seeds=[0,1,2]` reaches the Snakefile as strings (YAML BaseLoader), `seeds=3` as an int
    assert coerce_seeds(["0", "1", "2"]) == [0, 1, 2]
    assert coerce_seeds(3) == [3] and coerce_seeds("4") == [4]
    assert coerce_seeds(["x", 1.5]) == ["x", 1.5]  # left for the schema to reject


@pytest.mark.parametrize("seeds, pattern", [
    ([0, 0], r"seeds: \[0, 0\] has non-unique elements"),
    ([0, -1], r"seeds.1: -1 is less than the minimum"),
    ([], r"seeds: \[\] should be non-empty"),
    (["x"], r"seeds.0: 'x' is not of type 'integer'"),
])
def test_bad_seeds_name_the_key(repo, seeds, pattern):
    with pytest.raises(ConfigError, match=pattern) as exc:
        load_config(repo / "config" / "config.yaml", overrides={"seeds": seeds})
    assert "\n" not in str(exc.value)


def test_a_variant_named_like_a_branch_folder_is_rejected(repo):
    cfg = load_config(repo / "config" / "tiny.yaml")
    var = cfg["experiments"]["manifold"]["variants"]["diem_tweedie"]
    with pytest.raises(ConfigError, match=r"experiments.manifold.variants.seed_1: a variant may not be named"):
        load_config(repo / "config" / "tiny.yaml",
                    overrides={"seeds": [0, 1], "experiments": {"manifold": {"variants": {"seed_1": var}}}})


def test_one_seed_keeps_the_experiment_name_and_several_get_a_branch_each():
    assert seeds_of({"seed": 7}) == [7] and seeds_of({"seed": 7, "seeds": [2]}) == [2]
    assert branches({"seed": 0}, "digits") == [("digits", 0)]
    assert branches({"seed": 0, "seeds": [5]}, "digits") == [("digits", 5)]
    assert branches({"seed": 0, "seeds": [0, 1]}, "digits") == [("digits/seed_0", 0), ("digits/seed_1", 1)]
    assert split_branch("digits/seed_12") == ("digits", 12) and split_branch("digits") == ("digits", None)
    assert branch_seed({"seed": 0, "seeds": [0, 1]}, "digits/seed_1") == 1
    assert branch_seed({"seed": 3}, "digits") == 3


def test_a_branch_job_config_is_that_of_the_whole_config_with_its_seed(repo):
    cfg = load_config(repo / "config" / "tiny.yaml", overrides={"seeds": [0, 1]})
    alone = load_config(repo / "config" / "tiny.yaml", overrides={"seed": 1})
    branch = job_config(seeded(cfg, 1), "manifold", "diem_tweedie", drop=("metrics",))
    assert branch == job_config(alone, "manifold", "diem_tweedie", drop=("metrics",))
    assert branch["seed"] == 1 and "seeds" not in branch
    # and with one seed the job config (so its digest, so the job) is what it is without `seeds`
    plain = load_config(repo / "config" / "tiny.yaml")
    one = load_config(repo / "config" / "tiny.yaml", overrides={"seeds": [0]})
    assert config_digest(job_config(seeded(one, 0), "manifold")) == config_digest(job_config(plain, "manifold"))


def test_an_experiments_own_seeds_replace_the_top_level_ones(repo):
    cfg = load_config(repo / "config" / "tiny.yaml", overrides={"experiments": {"digits": {"seeds": [3, 4]}}})
    assert [b for b, _ in branches(cfg, "digits")] == ["digits/seed_3", "digits/seed_4"]
    assert branches(cfg, "manifold") == [("manifold", 0)]
    branch = job_config(seeded(cfg, 4), "digits", "diem_tweedie")
    assert branch["seed"] == 4 and "seeds" not in branch["experiments"]["digits"]
