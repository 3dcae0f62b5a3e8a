"""docker-compose's ``pacs`` profile: Orthanc with the repo's configuration and the node, wired together.

No Docker engine here (as in CI): ``docker compose config`` checks what can be checked without one.
"""

import json

from test_docker_files import ENV_EXAMPLE, PROJECT_ROOT, compose_config, dockerignore_excludes


def test_pacs_profile_runs_orthanc_with_the_repo_config_and_the_node_beside_it(tmp_path):
    env_file = tmp_path / "pacs.env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    done = compose_config(env_file, "--profile", "pacs")
    assert done.returncode == 0, f"docker compose --profile pacs config failed:\n{done.stderr}"
    services = json.loads(done.stdout)["services"]
    orthanc, node = services["orthanc"], services["node"]
    assert ":latest" not in orthanc["image"]
    published = {(p["target"], p.get("host_ip")) for p in orthanc["ports"]}
    assert published == {(4242, "127.0.0.1"), (8042, "127.0.0.1")}  # never open to the network by default
    mounts = {v["target"]: v["source"] for v in orthanc["volumes"]}
    config = json.loads((PROJECT_ROOT / "config/orthanc/docker.json").read_text())
    assert mounts["/etc/orthanc/orthanc.json"].endswith("config/orthanc/docker.json")
    assert config["LuaScripts"] == ["/etc/orthanc/forward.lua"] and "/etc/orthanc/forward.lua" in mounts
    assert config["AuthenticationEnabled"] and config["RegisteredUsers"] == {"cxr": "${ORTHANC_PASSWORD}"}
    assert config["DicomModalities"]["cxrnode"]["Host"] == "node"  # the node's service name
    assert node["command"][:4] == ["python", "-m", "cxr_core", "node"]
    assert "orthanc" in node["command"] and node["environment"]["CXR_NODE_DIR"].startswith("/home/cxr")
    without = compose_config(env_file)
    assert {"orthanc", "node"}.isdisjoint(json.loads(without.stdout)["services"])  # only with the profile


def test_the_image_the_node_runs_in_has_the_node_and_the_shared_viewer():
    for path in ("cxr_core/node/service.py", "ui_viewer.py", "pages/node.py", "ui/node_view.py"):
        assert (PROJECT_ROOT / path).exists(), path
        assert not dockerignore_excludes(path), f"{path} is excluded by .dockerignore"
