"""Flattens package modules into one self-contained source file for Hub remote code.

A `trust_remote_code=True` folder holds flat files; transformers copies only those and rejects
relative imports it cannot find there. We keep one source of truth (the package) and generate the
flat `modeling_bmojo.py` / `configuration_bmojo.py` from it:

1. Starting from root modules, follow every relative import (top-level or nested) to the module
   that DEFINES the imported name (package `__init__` re-exports, at top level or in a top-level `if`,
   are followed, not copied).
2. Order the modules so each comes after the modules its top-level imports need.
3. Hoist and deduplicate absolute imports; drop relative ones. A nested relative import (inside a
   function or a `try:`) becomes `pass`, since the names are already module globals.
4. One namespace now holds what were many: a top-level name defined by two modules (e.g.
   `ssd_step` in `kernels/ssd/naive.py` and `kernels/dispatch.py`) is renamed in every module but
   the last, and every importer of it follows the rename (aliases such as `as _ssd_step_reference`
   resolve the same way). Renaming is refused, loudly, where it could not be exact.
5. Modules that import Triton unguarded are wrapped in `if _HAS_TRITON:`, with `import triton` in a
   `try:`, so the file imports on machines without Triton (transformers' `check_imports` skips
   `try:` blocks).

Names bound by modules outside the flattened set (`external`) become `from .<flat module> import`.
Modules the flat file leaves out (`omit`, e.g. `bmojo.hub`, which the model reaches only to save itself
with remote code) may be imported only inside functions or `try:`; such an import becomes
`raise ImportError(...)` there, so the package code's `except ImportError:` fallback runs instead.
Anything this cannot express exactly raises `FlattenError` naming the module and the statement.
"""

import ast
import importlib.util
import io
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

OPTIONAL_IMPORTS = ("triton",)  # guarded: the flat file must import without them
GUARD_FLAG = "_HAS_TRITON"


class FlattenError(RuntimeError):
    """The package sources use a construct that cannot be flattened exactly."""


@dataclass
class Module:
    name: str  # dotted import name, e.g. "bmojo.kernels.ssd.naive"
    path: Path
    source: str
    tree: ast.Module
    is_package: bool
    top_deps: list = field(default_factory=list)  # modules whose top-level imports this one needs
    deps: list = field(default_factory=list)  # every module a relative import (anywhere) reaches
    imports: dict = field(default_factory=dict)  # local name -> (defining module, name there)
    visited: bool = False  # relative imports followed (set for defining modules only, not __init__)

    def defined_names(self):
        """Top-level names the module binds by its own code (not by imports)."""
        names = set()
        for node in self.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        return names


def load_module(name):
    """Reads a module's source through the import system, so setup.cfg's package_dir is honoured."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise FlattenError(f"cannot find the source of module {name!r}")
    path = Path(spec.origin)
    source = path.read_text(encoding="utf-8")
    is_package = spec.submodule_search_locations is not None
    return Module(name, path, source, ast.parse(source, str(path)), is_package)


def resolve_relative(module, node):
    """Absolute module name of `from .x import ...` written in `module`."""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    if not package:
        raise FlattenError(f"{module.name}: relative import beyond the top package (line {node.lineno})")
    return f"{package}.{node.module}" if node.module else package


def relative_imports(module):
    """(node, is_top_level) for every relative import statement in the module."""
    top = {id(node) for node in module.tree.body}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            yield node, id(node) in top
        elif isinstance(node, ast.Import) and any(a.name.startswith(".") for a in node.names):
            raise FlattenError(f"{module.name}: `import .x` cannot be flattened (line {node.lineno})")


def runs_at_import(module):
    """ids of the statements that bind module globals on import: the body and, recursively, the branches of
    its top-level `if` statements (kernels/__init__.py re-exports only when not imported as `kernels`)."""
    ids, todo = set(), list(module.tree.body)
    while todo:
        node = todo.pop()
        ids.add(id(node))
        if isinstance(node, ast.If):
            todo += node.body + node.orelse
    return ids


class Flattener:
    """Collects, orders and renders the modules reachable from `roots`."""

    def __init__(self, roots, external=None, omit=()):
        self.external = dict(external or {})  # dotted module name -> flat module name ("configuration_bmojo")
        self.omit = tuple(omit)  # dotted module (or package) names left out of the flat file
        self.modules = {}
        self.external_names = {}  # local name -> (flat module, name there)
        for root in roots:
            self._visit(root)
        self.order = self._order(roots)

    # -- collecting ---------------------------------------------------------------------------------
    def _get(self, name):
        if name not in self.modules:
            self.modules[name] = load_module(name)
        return self.modules[name]

    def _definition(self, module_name, symbol, seen=()):
        """(defining module, name there) for `symbol` imported from `module_name`, following re-exports."""
        if module_name in self.external:
            return module_name, symbol
        if (module_name, symbol) in seen:
            raise FlattenError(f"import cycle while resolving {symbol!r} from {module_name}")
        module = self._get(module_name)
        at_import = runs_at_import(module)
        for node, _ in relative_imports(module):
            for alias in node.names:
                if (alias.asname or alias.name) == symbol and id(node) in at_import:
                    return self._definition(resolve_relative(module, node), alias.name,
                                            seen + ((module_name, symbol),))
        if module.is_package:
            if importlib.util.find_spec(f"{module_name}.{symbol}") is not None:
                raise FlattenError(f"`from {module_name} import {symbol}` imports a module; "
                                   "import the names from it instead")
            raise FlattenError(f"{module_name} (__init__.py) does not re-export {symbol!r} relatively")
        if symbol not in module.defined_names():
            raise FlattenError(f"{module_name} does not define {symbol!r} at top level")
        return module_name, symbol

    def _visit(self, name):
        module = self._get(name)
        if module.is_package and module.name not in self.external:
            # A package's __init__ only re-exports: flatten what it re-exports, not the file itself.
            for node, _ in relative_imports(module):
                for alias in node.names:
                    owner, _ = self._definition(name, alias.asname or alias.name)
                    if owner not in self.external and owner != name:
                        self._visit_defining(owner)
            return
        self._visit_defining(name)

    def _visit_defining(self, name):
        module = self._get(name)
        if module.visited:
            return
        module.visited = True
        for node, top_level in relative_imports(module):
            if node.names[0].name == "*":
                raise FlattenError(f"{name}: `import *` cannot be flattened (line {node.lineno})")
            source = resolve_relative(module, node)
            if is_omitted(source, self.omit):
                if top_level:
                    raise FlattenError(f"{name}: {source} is left out of the flat file, so it may only be "
                                       f"imported inside a function or `try:` (line {node.lineno})")
                continue
            for alias in node.names:
                owner, symbol = self._definition(source, alias.name)
                local = alias.asname or alias.name
                if owner in self.external:
                    self._add_external(local, owner, symbol, name)
                    continue
                previous = module.imports.setdefault(local, (owner, symbol))
                if previous != (owner, symbol):
                    raise FlattenError(f"{name}: {local!r} names two different imports")
                if owner not in module.deps:
                    module.deps.append(owner)
                if top_level and owner not in module.top_deps:
                    module.top_deps.append(owner)
                self._visit_defining(owner)

    def _add_external(self, local, owner, symbol, importer):
        target = (self.external[owner], symbol)
        if local != symbol:
            raise FlattenError(f"{importer}: aliasing {symbol!r} from {owner} is not supported")
        if self.external_names.setdefault(local, target) != target:
            raise FlattenError(f"{importer}: {local!r} names two different external imports")

    def _order(self, roots):
        """Dependency order over top-level imports (depth first); nested imports only need inclusion."""
        order, state = [], {}

        def visit(name, path):
            if state.get(name) == "done":
                return
            if state.get(name) == "open":
                raise FlattenError("circular top-level imports: " + " -> ".join(path + [name]))
            state[name] = "open"
            for dep in self.modules[name].top_deps:
                visit(dep, path + [name])
            state[name] = "done"
            order.append(name)

        for name in sorted(n for n, m in self.modules.items() if m.visited):
            visit(name, [])
        return order

    # -- renaming -----------------------------------------------------------------------------------
    def flat_names(self):
        """(module, name) -> name in the flat file: the last definer keeps the name, earlier ones are renamed.

        Functions look globals up at call time, so an earlier module's code would otherwise silently call the
        later module's definition."""
        owners = {}
        for name in self.order:
            for symbol in self.modules[name].defined_names():
                owners.setdefault(symbol, []).append(name)
        taken = set(owners) | set(self.external_names)
        flat = {}
        for symbol, definers in owners.items():
            if symbol in self.external_names:
                raise FlattenError(f"{definers[0]} defines {symbol!r}, which the flat file imports")
            for module_name in definers[:-1]:
                if symbol.startswith("__"):
                    raise FlattenError(f"{symbol!r} is defined by {definers}; drop it from all but one")
                new = f"_{module_name.split('.')[-2]}_{module_name.split('.')[-1]}_{symbol.lstrip('_')}"
                if new in taken:
                    raise FlattenError(f"cannot rename {symbol!r} of {module_name}: {new!r} is taken")
                taken.add(new)
                flat[(module_name, symbol)] = new
            flat[(definers[-1], symbol)] = symbol
        return flat

    def renames(self, module, flat):
        """local name -> flat name, for the names of `module` whose spelling changes."""
        mapping = {}
        for symbol in module.defined_names():
            if flat[(module.name, symbol)] != symbol:
                mapping[symbol] = flat[(module.name, symbol)]
        for local, (owner, symbol) in module.imports.items():
            if local in module.defined_names():
                raise FlattenError(f"{module.name}: {local!r} is both defined and imported (in a nested "
                                   "scope); the flat file has one namespace, so import it under another name")
            if flat[(owner, symbol)] != local:
                mapping[local] = flat[(owner, symbol)]
        return mapping

    # -- rendering ----------------------------------------------------------------------------------
    def render(self, header):
        """The flat file's text: header, hoisted imports, then each module's body in order."""
        flat = self.flat_names()
        imports = ImportBlock()
        guarded = {name for name in self.order if needs_optional(self.modules[name])}
        bodies = []
        for name in self.order:
            module = self.modules[name]
            for node in split_top_level_imports(module)[0]:
                imports.add(node, module.name)
            body = rewrite_body(module, self.renames(module, flat), guarded, self.omit)
            bodies.append(section(module, body, name in guarded))
        for flat_module, symbol in sorted(self.external_names.values()):
            imports.add_from(flat_module, symbol, level=1)
        check_import_collisions(imports, flat)
        return "\n".join([header.rstrip() + "\n", imports.render(), *bodies]).rstrip() + "\n"


def node_is_optional(node):
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] in OPTIONAL_IMPORTS for a in node.names)
    if isinstance(node, ast.ImportFrom) and node.level == 0:
        return node.module.split(".")[0] in OPTIONAL_IMPORTS
    return False


def needs_optional(module):
    """True when the module imports an optional dependency (triton) outside any `try:`."""
    return any(node_is_optional(node) for node in split_top_level_imports(module)[0])


def split_top_level_imports(module):
    """(absolute top-level import nodes to hoist, top-level nodes that stay in the body)."""
    hoisted, kept = [], []
    for node in module.tree.body:
        is_abs = isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.level == 0)
        is_relative = isinstance(node, ast.ImportFrom) and node.level > 0
        if is_abs:
            hoisted.append(node)
        elif not is_relative:
            kept.append(node)
    return hoisted, kept


class ImportBlock:
    """Deduplicated absolute imports, rendered as __future__ / stdlib / third party / optional groups."""

    def __init__(self):
        self.plain = {}  # (module, asname) -> group
        self.froms = {}  # (module, level) -> {(name, asname)}

    def add(self, node, owner):
        if isinstance(node, ast.Import):
            for alias in node.names:
                self.plain[(alias.name, alias.asname)] = True
        else:
            for alias in node.names:
                if alias.name == "*":
                    raise FlattenError(f"{owner}: `from {node.module} import *` cannot be flattened")
                self.add_from(node.module, alias.name, alias.asname)

    def add_from(self, module, name, asname=None, level=0):
        self.froms.setdefault(("." * level + module, level), set()).add((name, asname))

    def bound_names(self):
        """name -> the import that binds it; two different imports of one name raise."""
        bound = {}
        for module, asname in self.plain:
            key = asname or module.split(".")[0]
            value = module if asname else module.split(".")[0]
            if bound.setdefault(key, ("import", value)) != ("import", value):
                raise FlattenError(f"two hoisted imports bind {key!r}")
        for (module, _), names in self.froms.items():
            for name, asname in names:
                if bound.setdefault(asname or name, (module, name)) != (module, name):
                    raise FlattenError(f"two hoisted imports bind {asname or name!r}")
        return bound

    def render(self):
        groups = {"future": [], "stdlib": [], "third": [], "optional": [], "local": []}
        for module, asname in sorted(self.plain, key=lambda k: (k[0], k[1] or "")):
            groups[_group(module)].append(f"import {module}" + (f" as {asname}" if asname else ""))
        for (module, level), names in sorted(self.froms.items()):
            group = "local" if level else _group(module)
            plain = sorted(n for n, a in names if a is None)
            aliased = sorted(f"{n} as {a}" for n, a in names if a is not None)
            if plain:
                groups[group].append(f"from {module} import {', '.join(plain)}")
            groups[group].extend(f"from {module} import {item}" for item in aliased)
        blocks = [lines for key, lines in groups.items() if lines and key != "optional"]
        text = "\n\n".join("\n".join(lines) for lines in blocks)
        if groups["optional"]:
            guarded = "\n".join("    " + line for line in groups["optional"])
            text += (f"\n\ntry:  # optional: Triton kernels run only where triton is installed\n{guarded}\n"
                     f"    {GUARD_FLAG} = True\nexcept ImportError:\n    {GUARD_FLAG} = False\n")
        return text + "\n"


def _group(module):
    top = module.split(".")[0]
    if top == "__future__":
        return "future"
    if top in OPTIONAL_IMPORTS:
        return "optional"
    return "stdlib" if top in sys.stdlib_module_names else "third"


def check_import_collisions(imports, flat):
    bound = imports.bound_names()
    for (module, symbol), new in flat.items():
        if new in bound:
            raise FlattenError(f"{module} defines {new!r}, which a hoisted import also binds")


def local_bindings(tree, names):
    """Names from `names` that are bound anywhere below module level (so renaming them would be wrong)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            for arg in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
                if arg is not None and arg.arg in names:
                    found.add(arg.arg)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            inner = node.body
            for child in inner:
                for sub in ast.walk(child):
                    if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store) and sub.id in names:
                        found.add(sub.id)
                    is_definition = isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                    if is_definition and sub.name in names:
                        found.add(sub.name)
                    if isinstance(sub, (ast.Global, ast.Nonlocal)):
                        found.update(set(sub.names) & set(names))
        if isinstance(node, (ast.comprehension, ast.ExceptHandler)):
            target = getattr(node, "target", None)
            if isinstance(node, ast.ExceptHandler) and node.name in names:
                found.add(node.name)
            if target is not None:
                found.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name) and n.id in names)
    return found


def rewrite_body(module, renames, guarded_modules, omit=()):
    """The module's code without its top-level imports, renamed, nested relative imports stubbed.

    Each kept top-level statement is copied with the comments and blank lines just above it."""
    kept = split_top_level_imports(module)[1]
    clash = local_bindings(module.tree, set(renames))
    if clash:
        raise FlattenError(f"{module.name}: cannot rename {sorted(clash)} for the flat file, since they are "
                           "also bound locally; give them unique names in the package")
    lines = module.source.splitlines(keepends=True)
    edits = {}  # line index -> list of (byte col, old, new)
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Name) and node.id in renames:
            edits.setdefault(node.lineno - 1, []).append((node.col_offset, node.id, renames[node.id]))
    for node in kept:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in renames:
            row, col = definition_name_position(module.source, node)
            edits.setdefault(row, []).append((col, node.name, renames[node.name]))
    for row, changes in edits.items():
        raw = lines[row].encode("utf-8")
        for col, old, new in sorted(changes, reverse=True):
            assert raw[col:col + len(old)] == old.encode(), (module.name, row, old)
            raw = raw[:col] + new.encode() + raw[col + len(old):]
        lines[row] = raw.decode("utf-8")
    for node, top_level in relative_imports(module):
        if not top_level:
            replace_statement(lines, node, nested_import_stub(module, node, guarded_modules, omit))
    out, previous_end = [], 0
    kept_ids = {id(node) for node in kept}
    for node in module.tree.body:
        if id(node) in kept_ids:
            out.append("".join(lines[previous_end:node.end_lineno]))
        previous_end = node.end_lineno
    return "".join(out).lstrip("\n")


def is_omitted(module_name, omit):
    return any(module_name == name or module_name.startswith(name + ".") for name in omit)


def nested_import_stub(module, node, guarded_modules, omit=()):
    """What a nested relative import becomes: `pass`, or an ImportError where its source needs Triton or
    is left out of the flat file."""
    source = resolve_relative(module, node)
    if is_omitted(source, omit):
        return f"raise ImportError('{source} is not part of the flat remote code')"
    if source in guarded_modules:
        return f"if not {GUARD_FLAG}: raise ImportError('triton is not installed')"
    return "pass"


def replace_statement(lines, node, text):
    first, last = node.lineno - 1, node.end_lineno - 1
    before = lines[first].encode("utf-8")[:node.col_offset]
    after = lines[last].encode("utf-8")[node.end_col_offset:]
    if before.strip() or after.strip():
        raise FlattenError(f"relative import on line {node.lineno} shares its line with other code")
    indent = lines[first][:node.col_offset]
    lines[first] = indent + text + "\n"
    for row in range(first + 1, last + 1):
        lines[row] = ""


def definition_name_position(source, node):
    """(row, byte col) of the name after `def` / `class` in a definition node."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    seen_keyword = False
    for tok in tokens:
        if tok.start[0] < node.lineno:
            continue
        if tok.type == tokenize.NAME and tok.string in ("def", "class"):
            seen_keyword = True
        elif seen_keyword and tok.type == tokenize.NAME and tok.string == node.name:
            line = source.splitlines()[tok.start[0] - 1]
            return tok.start[0] - 1, len(line[:tok.start[1]].encode("utf-8"))
    raise FlattenError(f"cannot find the name of {node.name!r}")


def string_continuation_rows(text):
    """Rows (0-based) that lie inside a multi-line string: indenting them would change the string."""
    rows = set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
            rows.update(range(tok.start[0], tok.end[0]))  # 0-based rows after the string's first row
    return rows


def indent_block(text):
    skip = string_continuation_rows(text)
    lines = text.splitlines(keepends=True)
    return "".join(line if i in skip or not line.strip() else "    " + line for i, line in enumerate(lines))


def section(module, text, guarded):
    """One module's code under a banner naming where it comes from in the package."""
    text = text.rstrip("\n") + "\n"
    if guarded:
        text = f"if {GUARD_FLAG}:  # this module needs Triton\n" + (indent_block(text) or "    pass\n")
    banner = f"# {'-' * 20} {module.name} ({module.path.parent.name}/{module.path.name}) {'-' * 20}\n"
    return "\n" + banner + "\n" + text


def flatten(roots, header, external=None, omit=()):
    """Source of one flat module holding `roots` and everything they import relatively (but `omit`)."""
    return Flattener(roots, external, omit).render(header)
