"""The layout's rules, checked on the source: core is pure, the planes meet only in serve.py,
the processes (lb/process) know neither plane but the worker's data plane, and no private
name crosses a module boundary."""

import ast
from pathlib import Path

import pytest

LB = Path(__file__).resolve().parents[2] / "lb"
# Modules that do I/O, run things, or reach the OS; core must not import them.
IO_MODULES = {"asyncio", "socket", "os", "subprocess", "signal", "threading", "select", "selectors",
              "ssl", "pathlib", "shutil", "tempfile", "io", "uvloop", "multiprocessing", "urllib",
              "http.client", "http.server", "importlib", "logging", "sys", "prometheus_client"}


def modules(folder: str = ""):
    return sorted((LB / folder).rglob("*.py"))


def imports(path: Path):
    """(absolute module name, names imported) for every import in a file."""
    package = ".".join(path.relative_to(LB.parent).with_suffix("").parts[:-1])
    return imports_of(path.read_text(), package)


def imports_of(source: str, package: str):
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            yield name, [alias.name for alias in node.names]


@pytest.mark.parametrize("path", modules("core"), ids=lambda p: p.name)
def test_core_imports_nothing_outside_core_and_no_io(path):
    for name, _ in imports(path):
        top = name.split(".")[0]
        assert not (top == "lb" and not name.startswith("lb.core")), f"{path.name} imports {name}"
        assert top not in IO_MODULES and name not in IO_MODULES, f"{path.name} imports {name}"


@pytest.mark.parametrize("plane, other", [("proxy", "lb.control"), ("control", "lb.proxy")])
def test_the_planes_do_not_import_each_other(plane, other):
    for path in modules(plane):
        for name, _ in imports(path):
            assert not name.startswith(other), f"{path.relative_to(LB)} imports {name}"


# The demo app's parts that the backend, the benches and the tests share, as plain data both ways.
DEMO_PURE = ["spa.py"]


@pytest.mark.parametrize("name", DEMO_PURE)
def test_the_demo_apps_shared_parts_do_no_io(name):
    for imported, _ in imports(LB / "demo" / name):
        top = imported.split(".")[0]
        assert top not in IO_MODULES and imported not in IO_MODULES, f"demo/{name} imports {imported}"
        assert top != "lb", f"demo/{name} imports {imported}"


# lb/process starts, watches and replaces processes; what they run is the planes' business.
PROCESS_MAY_NOT_IMPORT = ("lb.control", "lb.deploy", "lb.demo", "lb.serve", "lb.proxy")
PROCESS_RUNS_THE_DATA_PLANE = {"worker.py"}      # only the worker process imports lb.proxy
MAX_MODULE_LINES = 600


@pytest.mark.parametrize("path", modules("process"), ids=lambda p: p.name)
def test_the_processes_import_no_plane_but_the_workers_data_plane(path):
    for name, _ in imports(path):
        forbidden = [p for p in PROCESS_MAY_NOT_IMPORT if name == p or name.startswith(p + ".")]
        if path.name in PROCESS_RUNS_THE_DATA_PLANE:
            forbidden = [p for p in forbidden if p != "lb.proxy"]
        assert not forbidden, f"process/{path.name} imports {name}"


@pytest.mark.parametrize("plane", ["control", "proxy", "core"])
def test_no_plane_imports_the_processes(plane):
    for path in modules(plane):
        for name, _ in imports(path):
            assert not name.startswith("lb.process"), f"{path.relative_to(LB)} imports {name}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(LB)))
def test_no_module_is_over_600_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES, path.relative_to(LB)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(LB)))
def test_no_private_name_is_imported_across_modules(path):
    for name, names in imports(path):
        private = [n for n in names if n.startswith("_")]
        assert not private or name == "__future__", f"{path.relative_to(LB)} imports {private} from {name}"


# lb/core/http1's modules and what each may import of its siblings: the rules first, the two
# parser adapters on them side by side, the writer apart; the package's namespace imports
# them and none imports it, so the package has no import circle.
HTTP1_MAY_IMPORT = {
    "framing": set(),
    "heads": {"framing"},
    "llhttp_adapter": {"heads"},
    "h11_adapter": {"framing", "heads"},
    "writer": {"framing", "heads"},
    "__init__": {"heads", "llhttp_adapter", "h11_adapter", "writer"},
}
# Within core, each parser library is reached through its one adapter.
PARSER_LIBRARIES = {"httptools": "llhttp_adapter", "h11": "h11_adapter"}


def siblings(path: Path, package: str = "http1"):
    """The lb.core.<package> modules a file imports, by their short names ("__init__" for the package)."""
    for name, names in imports(path):
        if name == f"lb.core.{package}":
            yield from (n if (path.parent / f"{n}.py").exists() else "__init__" for n in names)
        elif name.startswith(f"lb.core.{package}."):
            yield name.split(".")[3]


def test_every_http1_module_has_a_row():
    assert {p.stem for p in modules("core/http1")} == set(HTTP1_MAY_IMPORT)


@pytest.mark.parametrize("path", modules("core/http1"), ids=lambda p: p.name)
def test_http1_modules_import_only_the_siblings_their_row_names(path):
    for sibling in siblings(path):
        assert sibling in HTTP1_MAY_IMPORT[path.stem], f"core/http1/{path.name} imports {sibling}"


# lb/core/http2, the same way: HPACK on its Huffman code, the streams on the frames' constants,
# the connection on all three. lb's own HTTP/2 uses none of the libraries it replaces (h2,
# hpack, hyperframe): they are the tests' references.
HTTP2_MAY_IMPORT = {
    "huffman": set(),
    "hpack": {"huffman"},
    "frames": set(),
    "streams": {"frames"},
    "connection": {"frames", "hpack", "streams"},
    "__init__": set(),
}
HTTP2_REFERENCES = {"h2", "hpack", "hyperframe"}


def test_every_http2_module_has_a_row():
    assert {p.stem for p in modules("core/http2")} == set(HTTP2_MAY_IMPORT)


@pytest.mark.parametrize("path", modules("core/http2"), ids=lambda p: p.name)
def test_http2_modules_import_only_their_rows_siblings_and_no_reference_library(path):
    for sibling in siblings(path, "http2"):
        assert sibling in HTTP2_MAY_IMPORT[path.stem], f"core/http2/{path.name} imports {sibling}"
    for name, _ in imports(path):
        assert name.split(".")[0] not in HTTP2_REFERENCES, f"core/http2/{path.name} imports {name}"


@pytest.mark.parametrize("path", modules("core"), ids=lambda p: str(p.relative_to(LB)))
def test_only_its_adapter_in_core_imports_a_parser_library(path):
    for name, _ in imports(path):
        adapter = PARSER_LIBRARIES.get(name.split(".")[0])
        assert adapter is None or path == LB / "core" / "http1" / f"{adapter}.py", f"{path.name} imports {name}"


def test_the_walker_resolves_what_the_rules_need():
    found = list(imports_of("import asyncio\nfrom ..proxy import client\nfrom .config import _private\n"
                            "from . import nodes\n", "lb.core"))
    assert found == [("asyncio", []), ("lb.proxy", ["client"]), ("lb.core.config", ["_private"]),
                     ("lb.core", ["nodes"])]


@pytest.mark.parametrize("path", modules("proxy") + modules("control"), ids=lambda p: str(p.relative_to(LB)))
def test_the_planes_probe_no_seam_with_hasattr(path):
    # A seam with two implementations is declared in lb/core/seams.py (a Protocol), and the
    # caller uses what it declares; a probe would hide an implementation that lacks a member.
    probes = [node.lineno for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Name) and node.func.id == "hasattr"]
    assert not probes, f"{path.relative_to(LB)} probes with hasattr at lines {probes}"


# The cluster store's adapter (issue 31): lb deploy will use it as the master does, so it leans on
# lb.core only, and it speaks etcd's JSON gateway, not gRPC (pyproject.toml says why).
STORE_ADAPTER = LB / "control" / "etcd.py"


def test_the_store_adapter_imports_only_core_and_no_grpc():
    for name, _ in imports(STORE_ADAPTER):
        top = name.split(".")[0]
        assert top != "lb" or name.startswith("lb.core"), f"control/etcd.py imports {name}"
        assert top not in {"grpc", "etcd3", "aetcd", "protobuf", "google"}, f"control/etcd.py imports {name}"


# Cluster membership (issue 31) is the control plane's: it reads the control plane passed to it,
# and reaches etcd only through the store adapter, never with a client of its own.
MEMBERSHIP = LB / "control" / "cluster.py"


def test_membership_reaches_etcd_only_through_the_store_adapter():
    for name, _ in imports(MEMBERSHIP):
        top = name.split(".")[0]
        assert top != "lb" or name in ("lb", "lb.control.etcd") or name.startswith("lb.core"), \
            f"control/cluster.py imports {name}"
        assert top not in {"grpc", "etcd3", "aetcd", "http", "urllib", "aiohttp", "httpx"}, \
            f"control/cluster.py imports {name}"


# lb deploy --cluster (issue 31) reads the members from etcd as the master writes them, through the
# same store adapter; the rest of the control plane is the lbs' own, reached only by their admin sockets.
@pytest.mark.parametrize("path", modules("deploy"), ids=lambda p: str(p.relative_to(LB)))
def test_deploy_imports_of_the_control_plane_only_the_store_adapter(path):
    for name, _ in imports(path):
        assert not name.startswith("lb.control") or name == "lb.control.etcd", f"deploy/{path.name} imports {name}"
