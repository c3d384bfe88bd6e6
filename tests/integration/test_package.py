"""The package users install: `make test` installs the extension from this version's tarball
(through its install.sh) before this suite runs, so every other test exercises those files."""

import hashlib
import os
import shutil
import subprocess
import tarfile

import pytest
from pg import PG_CONFIG

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _pg(flag: str) -> str:
    return subprocess.check_output([PG_CONFIG, flag], text=True).strip()


MAJOR = _pg("--version").split()[1].split(".")[0]


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    with open(os.path.join(ROOT, "dist", f"pg{MAJOR}", "tarball")) as f:
        tarball = f.read().strip()
    dest = tmp_path_factory.mktemp("pkg")
    with tarfile.open(tarball) as t:
        t.extractall(dest, filter="data")
    (top,) = os.listdir(dest)
    return os.path.join(dest, top)


def _run_install(pkgdir, *args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "PG_CONFIG"}
    env.update(env_extra or {})
    return subprocess.run([os.path.join(pkgdir, "install.sh"), *args], capture_output=True, text=True, env=env)


def test_installed_extension_is_the_package(pkg):
    info = dict(line.split("=", 1) for line in open(os.path.join(pkg, "BUILD_INFO")).read().splitlines())
    assert info["pg_major"] == MAJOR
    assert info["built_against"] == _pg("--version")
    assert _sha(os.path.join(pkg, "lib", "kinde_rls.so")) == _sha(os.path.join(_pg("--pkglibdir"), "kinde_rls.so"))
    files = sorted(os.listdir(os.path.join(pkg, "extension")))
    assert "kinde_rls.control" in files and f"kinde_rls--{info['version']}.sql" in files
    for name in files:
        installed = os.path.join(_pg("--sharedir"), "extension", name)
        assert _sha(os.path.join(pkg, "extension", name)) == _sha(installed), name


def test_install_script_stages_under_destdir(pkg, tmp_path):
    r = _run_install(pkg, "--pg-config", PG_CONFIG, env_extra={"DESTDIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(f"{tmp_path}{_pg('--pkglibdir')}/kinde_rls.so")
    assert os.path.isfile(f"{tmp_path}{_pg('--sharedir')}/extension/kinde_rls.control")


def test_install_script_takes_explicit_directories(pkg, tmp_path):
    r = _run_install(pkg, "--libdir", str(tmp_path / "lib"), "--sharedir", str(tmp_path / "share"))
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(tmp_path / "lib" / "kinde_rls.so")
    assert os.path.isfile(tmp_path / "share" / "extension" / "kinde_rls.control")
    r = _run_install(pkg, "--libdir", str(tmp_path / "lib"))
    assert r.returncode == 2 and "--libdir and --sharedir go together" in r.stderr


def test_install_script_refuses_another_major_version(pkg, tmp_path):
    other = "16" if MAJOR != "16" else "14"
    fake = tmp_path / "pg_config"
    fake.write_text(f"#!/bin/sh\necho 'PostgreSQL {other}.4'\n")
    fake.chmod(0o755)
    r = _run_install(pkg, "--pg-config", str(fake), env_extra={"DESTDIR": str(tmp_path / "root")})
    assert r.returncode == 1
    assert f"this package is for PostgreSQL {MAJOR}; {fake} is PostgreSQL {other}.4" in r.stderr
    assert not (tmp_path / "root").exists()


def test_install_script_refuses_altered_files(pkg, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(pkg, copy)
    with open(copy / "extension" / "kinde_rls.control", "a") as f:
        f.write("superuser = false\n")
    r = _run_install(str(copy), "--pg-config", PG_CONFIG, env_extra={"DESTDIR": str(tmp_path / "root")})
    assert r.returncode != 0
    assert "kinde_rls.control" in r.stdout + r.stderr
    assert not (tmp_path / "root").exists()


def test_install_script_refuses_an_older_glibc(pkg, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(pkg, copy)
    info = (copy / "BUILD_INFO").read_text()
    required = [line for line in info.splitlines() if line.startswith("glibc_required=")][0]
    assert required.startswith("glibc_required=2.")
    (copy / "BUILD_INFO").write_text(info.replace(required, "glibc_required=9.99"))
    subprocess.run("find . -type f ! -name SHA256SUMS | sort | xargs sha256sum > SHA256SUMS",
                   shell=True, cwd=copy, check=True)
    r = _run_install(str(copy), "--pg-config", PG_CONFIG, env_extra={"DESTDIR": str(tmp_path / "root")})
    assert r.returncode == 1
    assert "this package needs glibc 9.99 or newer" in r.stderr
    assert not (tmp_path / "root").exists()
