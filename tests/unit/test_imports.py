"""No import circle in lb: the import graph of every module, lazy imports inside functions
included (a circle there is one waiting for someone to hoist the import), walked for cycles;
and every module imports on its own in a fresh interpreter."""

import ast
import subprocess
import sys
from pathlib import Path

LB = Path(__file__).resolve().parents[2] / "lb"


def module_name(path: Path) -> str:
    parts = path.relative_to(LB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(LB.rglob("*.py"))}


def imported(name: str, source: str, is_package: bool) -> set[str]:
    """The lb modules `source` (module `name`) imports; `from pkg import mod` names mod."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[:len(parts) - node.level + 1] if node.level else []
            origin = ".".join(base + ([node.module] if node.module else []))
            found.update(f"{origin}.{a.name}" if f"{origin}.{a.name}" in MODULES else origin for a in node.names)
    return {module for module in found if module in MODULES and module != name}


def import_graph() -> dict[str, set[str]]:
    return {name: imported(name, path.read_text(), path.name == "__init__.py") for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path (first module repeated at the end), or None."""
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for other in sorted(graph[module]):
            cycle = visit(other)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    return next((cycle for module in sorted(graph) if (cycle := visit(module))), None)


def test_lb_has_no_import_circle():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_circle_and_resolves_relative_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert imported("lb.demo.demo", "from ..cli import run_async\nfrom .. import tls\n", False) == {"lb.cli", "lb.tls"}


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    # One interpreter per module would take seconds; one that forgets every lb module before
    # each import catches the same order-dependent failures (a circle fails by import order).
    script = ("import sys\n"
              "for name in sys.argv[1:]:\n"
              "    for loaded in [m for m in sys.modules if m == 'lb' or m.startswith('lb.')]:\n"
              "        del sys.modules[loaded]\n"
              "    __import__(name)\n")
    names = [name for name in MODULES if name != "lb.__main__"]
    done = subprocess.run([sys.executable, "-c", script, *names], cwd=LB.parent, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_each_process_imports_only_the_libraries_it_uses():
    """Memory is mostly the code a process loaded (issue 29): a worker holds no YAML, no
    metrics library and no certificate library until TLS asks for it (lb/tls.py prepares
    that before privileges drop); the master no HTTP/1.1 h11 parser unless `http: h11`;
    neither any of the test-only references (h2 and its parts)."""
    script = ("import sys, importlib\n"
              "importlib.import_module(sys.argv[1])\n"
              "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))\n")
    unused = {"lb.worker": {"h11", "cryptography", "yaml", "prometheus_client", "h2", "hpack", "hyperframe"},
              "lb.serve": {"h11", "cryptography", "h2", "hpack", "hyperframe", "wsproto"}}
    for entry, libraries in unused.items():
        done = subprocess.run([sys.executable, "-c", script, entry], cwd=LB.parent, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert not libraries & set(done.stdout.split()), (entry, libraries & set(done.stdout.split()))
