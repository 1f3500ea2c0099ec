"""The HAProxy wrapper that `jitgate up` hands to Serve edits the config, then runs the bundled binary."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cluster.bootstrap import _write_haproxy_wrapper

CONFIG = """global
    log 127.0.0.1:514 local0 info
defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend prometheus
    bind :{metrics_port}
    mode http
    http-request return status 200 content-type text/plain string "ok"
listen stats
  bind *:{stats_port}
  stats enable
frontend http_frontend
    bind 127.0.0.1:{api_port}
    http-request return status 200 content-type text/plain string "ok"
"""


def run_wrapper(tmp_path: Path, config: Path) -> subprocess.CompletedProcess:
    wrapper = _write_haproxy_wrapper(tmp_path, 48404, 49101)
    return subprocess.run([str(wrapper), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)


def test_wrapper_edits_binds_and_logging(tmp_path):
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(metrics_port=49101, stats_port=48404, api_port=48000))
    checked = run_wrapper(tmp_path, config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = [line.strip() for line in config.read_text().splitlines()]
    assert "bind 127.0.0.1:49101" in lines
    assert "bind 127.0.0.1:48404" in lines
    assert "bind 127.0.0.1:48000" in lines
    assert lines.count("option dontlog-normal") == 1
    assert lines.index("option dontlog-normal") == lines.index("option httplog") + 1

    again = run_wrapper(tmp_path, config)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [line.strip() for line in config.read_text().splitlines()].count("option dontlog-normal") == 1
