"""Config: defaults live only in Pulumi.yaml, stack files parse, bad values fail clearly."""

from __future__ import annotations

import re

import pytest
import yaml

from infra.config import InfraConfigError, load_config, parse_gpu_pool
from tests.infra.infra_harness import ROOT, project_defaults, run_mocked, stack_config

pytestmark = pytest.mark.infra

CONFIG_SRC = (ROOT / "infra" / "config.py").read_text()
READ_KEYS = set(re.findall(r'cfg\.require(?:_int|_bool|_object|_secret)?\("(\w+)"\)', CONFIG_SRC))
DECLARED = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]


def _load(stack: str, **overrides: object):
    """load_config() under mocks with the stack's config plus overrides."""
    return run_mocked(load_config, stack=stack, config=stack_config(stack, overrides)).value


def test_every_key_config_py_reads_is_declared_with_type_and_description() -> None:
    declared = {key.removeprefix("mlre:") for key in DECLARED}
    assert READ_KEYS, "regex found no config reads"
    assert declared >= READ_KEYS
    for key in READ_KEYS:
        spec = DECLARED[f"mlre:{key}"]
        assert spec["type"] in {"string", "integer", "boolean", "array"}
        assert spec["description"]


def test_config_py_holds_no_defaults() -> None:
    # Defaults live in Pulumi.yaml only: no `cfg.get(..., default)` style reads in code.
    assert not re.search(r"cfg\.get\w*\(", CONFIG_SRC)


def test_credentials_have_no_defaults() -> None:
    for key in ("mlre:prefectApiKey", "mlre:budgetAlertEmail"):
        assert "default" not in DECLARED[key]
    assert DECLARED["mlre:prefectApiKey"]["secret"] is True
    # Not a credential: empty unless the user brings an API (then required, see below).
    assert DECLARED["mlre:prefectApiUrl"]["default"] == ""


def test_default_public_endpoint_is_off() -> None:
    assert project_defaults()["mlre:clusterPublicAccessCidrs"] == []


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_stack_files_load_into_typed_config(stack: str) -> None:
    cfg = _load(stack)
    assert cfg.stack == stack
    assert cfg.network.az_count >= 2
    assert len(cfg.network.private_subnet_cidrs) == cfg.network.az_count
    assert cfg.cluster.gpu_pools
    # Dev runs its own Prefect server; prod brings Prefect Cloud (the server is one replica).
    if stack == "dev":
        assert cfg.services.prefect_server
        assert cfg.services.prefect_api is None
    else:
        assert not cfg.services.prefect_server
        assert cfg.services.prefect_api.url.startswith("https://")


def test_dev_is_small_spot_and_prod_is_resilient() -> None:
    dev, prod = _load("dev"), _load("prod")
    assert all(p.capacity_type == "SPOT" for p in dev.cluster.gpu_pools)
    assert dev.network.single_nat_gateway
    assert not prod.network.single_nat_gateway
    assert prod.data.db_multi_az
    assert prod.data.db_deletion_protection
    assert not dev.data.db_multi_az
    assert prod.data.redis_num_cache_clusters >= 2


def test_gpu_pool_spec_parses() -> None:
    pool = parse_gpu_pool("name=l4;instances=g6.xlarge, g6.2xlarge;capacity=spot;max=3;gpus=1")
    assert pool.instance_types == ("g6.xlarge", "g6.2xlarge")
    assert (pool.capacity_type, pool.max_size, pool.gpus_per_node) == ("SPOT", 3, 1)


@pytest.mark.parametrize(
    "spec",
    [
        "name=x;instances=g5.xlarge;capacity=SPOT;max=2",  # no gpus
        "name=x;instances=g5.xlarge;capacity=RESERVED;max=2;gpus=1",
        "name=x;instances=;capacity=SPOT;max=2;gpus=1",
        "name=x;instances=g5.xlarge;capacity=SPOT;max=zero;gpus=1",
    ],
)
def test_bad_gpu_pool_spec_names_the_key(spec: str) -> None:
    with pytest.raises(InfraConfigError, match="mlre:gpuPools"):
        parse_gpu_pool(spec)


def test_open_public_endpoint_is_refused() -> None:
    with pytest.raises(InfraConfigError, match="clusterPublicAccessCidrs"):
        _load("dev", **{"mlre:clusterPublicAccessCidrs": ["0.0.0.0/0"]})


def test_too_few_subnets_for_azs_is_refused() -> None:
    with pytest.raises(InfraConfigError, match="one per AZ"):
        _load("dev", **{"mlre:azCount": 4})


def test_missing_prefect_api_key_fails_when_no_server_runs() -> None:
    config = {k: v for k, v in stack_config("prod").items() if k != "mlre:prefectApiKey"}
    with pytest.raises(Exception, match="prefectApiKey"):
        run_mocked(load_config, stack="prod", config=config)


def test_prefect_api_key_is_not_needed_with_the_in_cluster_server() -> None:
    config = {k: v for k, v in stack_config("dev").items() if k != "mlre:prefectApiKey"}
    assert run_mocked(load_config, stack="dev", config=config).value.services.prefect_server


@pytest.mark.parametrize("url", ["", "api.prefect.cloud/api"])
def test_prefect_api_url_is_required_only_without_the_server(url: str) -> None:
    with pytest.raises(InfraConfigError, match="mlre:prefectServer is off, so mlre:prefectApiUrl"):
        _load("prod", **{"mlre:prefectApiUrl": url})
    # No URL with the server on: the stack brings its own API.
    on = {"mlre:prefectApiUrl": "", "mlre:prefectServer": True}
    assert _load("prod", **on).services.prefect_server


def test_prefect_api_url_with_the_server_on_is_refused() -> None:
    with pytest.raises(InfraConfigError, match=r"mlre:prefectServer is on.*mlre:prefectApiUrl"):
        _load("dev", **{"mlre:prefectApiUrl": "https://api.prefect.cloud/api"})
