"""The Dockerfiles, docker-compose.yml and .env.example agree with the code: no engine runs here,
so these files are kept correct by checking them against what the code expects."""

from __future__ import annotations

import re

import pytest
import yaml

from app.core.config import Settings
from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SETTING_NAMES = {f"QSIM_{name.upper()}" for name in Settings.model_fields}


def dockerfile(name: str) -> str:
    return (ROOT / name).read_text()


def test_every_qsim_variable_the_deployment_sets_is_a_real_setting():
    compose_vars = (
        set(COMPOSE["x-qsim-environment"])
        | set(COMPOSE["services"]["qsim-gpu"]["environment"])
        | set(COMPOSE["services"]["qsim-milvus"]["environment"])
    )
    image_vars = set(re.findall(r"\b(QSIM_[A-Z_]+)=", dockerfile("Dockerfile") + dockerfile("docker/Dockerfile.gpu")))
    assert compose_vars - {"<<"} <= SETTING_NAMES
    assert image_vars <= SETTING_NAMES


def test_env_example_only_names_settings_or_compose_variables():
    compose_text = (ROOT / "docker-compose.yml").read_text()
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name = line.split("=", 1)[0]
            assert name in SETTING_NAMES or "${" + name in compose_text, name


def test_app_waits_for_a_healthy_database_and_keeps_its_data_in_named_volumes():
    db = COMPOSE["services"]["db"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    for name in ("qsim", "qsim-gpu", "qsim-milvus"):
        service = COMPOSE["services"][name]
        assert service["depends_on"]["db"]["condition"] == "service_healthy"
        for volume in service["volumes"]:
            assert volume.split(":")[0] in COMPOSE["volumes"]
    assert "db-data" in [v.split(":")[0] for v in db["volumes"]]


def test_gpu_service_is_behind_a_profile_and_reserves_a_gpu():
    gpu = COMPOSE["services"]["qsim-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"


def test_milvus_profile_runs_standalone_milvus_and_points_the_app_at_it():
    services = COMPOSE["services"]
    milvus_services = {name for name, service in services.items() if service.get("profiles") == ["milvus"]}
    assert milvus_services == {"milvus-etcd", "milvus-minio", "milvus", "qsim-milvus"}
    app = services["qsim-milvus"]
    assert app["environment"]["QSIM_INDEX_BACKEND"] == "milvus"
    assert app["environment"]["QSIM_MILVUS_URI"] == "http://milvus:19530"
    assert app["depends_on"]["milvus"]["condition"] == "service_healthy"
    assert services["milvus"]["command"] == ["milvus", "run", "standalone"]
    assert {"milvus-etcd", "milvus-minio"} <= set(services["milvus"]["depends_on"])
    for volume in services["milvus"]["volumes"]:
        assert volume.split(":")[0] in COMPOSE["volumes"]
    # The image the profile runs has the Milvus client.
    assert '".[milvus]"' in dockerfile("Dockerfile") and "milvus" in _pyproject()["project"]["optional-dependencies"]


@pytest.mark.parametrize("name", ["Dockerfile", "docker/Dockerfile.gpu"])
def test_images_run_the_shared_entrypoint_as_a_non_root_user_with_a_healthcheck(name):
    text = dockerfile(name)
    assert 'ENTRYPOINT ["/opt/qsim/docker/entrypoint.sh"]' in text
    assert "COPY docker/entrypoint.sh ./docker/entrypoint.sh" in text
    assert re.search(r"^USER qsim$", text, re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert '"torch==2.13.0"' in text  # never a bare torch
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / copied).exists(), copied


@pytest.mark.parametrize("name", ["Dockerfile", "docker/Dockerfile.gpu"])
def test_everything_the_service_writes_lies_where_the_images_user_may_write(name):
    """The SQLite database, the saved index and (with several workers) the metrics files: each set in
    the image, under a directory the image gives to the qsim user; the defaults (under /opt/qsim/var)
    would be root's."""
    text = dockerfile(name)
    env = dict(re.findall(r"\b(QSIM_[A-Z_]+)=(\S+)", text))
    owned = re.search(r"chown -R qsim:qsim ([^\n]+)", text).group(1).split()
    written = {
        "QSIM_DATABASE_URL": env["QSIM_DATABASE_URL"].removeprefix("sqlite:///"),
        "QSIM_INDEX_DIR": env["QSIM_INDEX_DIR"],
        "QSIM_METRICS_DIR": env.get("QSIM_METRICS_DIR", "/opt/qsim/var/metrics"),
    }
    for variable, path in written.items():
        assert any(path.startswith(f"{directory.rstrip('/')}/") for directory in owned), (variable, path, owned)


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_a_plain_install_brings_faiss_cpu_since_the_code_imports_faiss_at_module_level():
    project = _pyproject()["project"]
    assert any(re.match(r"faiss-cpu\b", dep) for dep in project["dependencies"])
    extras = project["optional-dependencies"]
    # No extra pulls a second wheel of the same `faiss` module next to faiss-cpu.
    assert not any("faiss" in dep for deps in extras.values() for dep in deps)
    # `cpu` stays as an empty alias: `make install` (EXTRAS=cpu,...) and older commands keep working.
    assert extras.get("cpu") == []
    for name in re.findall(r"^EXTRAS \?= (\S+)", (ROOT / "Makefile").read_text(), re.M)[0].split(","):
        assert name in extras, name


def test_cpu_image_installs_the_plain_package_and_gpu_image_swaps_in_the_faiss_gpu_build():
    assert re.search(r'pip install "?\.(\[milvus\])?"?( |$)', dockerfile("Dockerfile"), re.M)
    gpu = dockerfile("docker/Dockerfile.gpu")
    install = re.search(r"^RUN pip install \..*$", gpu, re.M).group(0)
    steps = [step.strip() for step in install.split("&&")]
    uninstall = next(i for i, step in enumerate(steps) if "uninstall" in step and "faiss-cpu" in step)
    gpu_build = next(i for i, step in enumerate(steps) if "faiss-gpu-cu12" in step and "uninstall" not in step)
    assert uninstall < gpu_build  # remove the CPU wheel's `faiss` first, then install the GPU one
    assert '".[gpu]"' not in gpu


def test_entrypoint_is_executable_and_execs_the_server():
    script = ROOT / "docker" / "entrypoint.sh"
    assert script.stat().st_mode & 0o111
    body = script.read_text()
    assert 'exec python -m app serve "$@"' in body  # serve waits for the database, migrates and seeds first


def test_torch_is_pinned_exactly_in_the_project():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject
    assert not re.search(r'"torch\s*(>|<|~|!|")', pyproject)
