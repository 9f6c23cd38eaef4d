"""Load and validate policy files: one YAML file, or a folder of `*.yaml` files in name order."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.policy.catalog import CatalogBuilder
from gateway.policy.dryrun import check_conditions_by_dry_run
from gateway.policy.durations import DurationError, format_duration, parse_duration
from gateway.policy.engine import DEFAULT_MAX_TTL_SECONDS, DEFAULT_TTL_SECONDS, Defaults, Policy, Rule
from gateway.policy.fields import FileContext, check_keys, check_mapping, check_sequence
from gateway.policy.problems import PolicyLoadError, PolicyProblem, ProblemCollector
from gateway.policy.rules import parse_rule
from gateway.policy.yamlsource import LineMapping, YamlSyntaxError, parse_yaml

POLICY_FILE_KEYS = ("version", "defaults", "catalog", "rules")
DEFAULTS_KEYS = ("ttl", "max_ttl")
SUPPORTED_VERSION = 1

# Large enough for a catalog of tens of thousands of playback ids; a bigger file is a mistake.
MAX_POLICY_FILE_BYTES = 10 * 1024 * 1024

FileSignature = tuple[tuple[str, int, int], ...]


def policy_files(path: Path) -> list[Path]:
    """List the files a policy path stands for: the file itself, or a folder's `*.yaml` files.

    Files whose names start with a dot (editor swap files, Kubernetes ConfigMap internals) are
    skipped. Subfolders such as `tests/` are not read. Raises PolicyLoadError when there is
    nothing to load.
    """
    if path.is_file():
        return [path]
    if not path.exists():
        raise PolicyLoadError([PolicyProblem(str(path), 0, None, "no such file or folder")])
    if not path.is_dir():
        raise PolicyLoadError([PolicyProblem(str(path), 0, None, "not a file or folder")])

    files = sorted(
        child for child in path.iterdir()
        if child.suffix == ".yaml" and not child.name.startswith(".") and child.is_file()
    )
    if not files:
        raise PolicyLoadError([PolicyProblem(str(path), 0, None, "the folder has no *.yaml policy files")])
    return files


def file_signature(path: Path) -> FileSignature:
    """Return (name, mtime_ns, size) of every policy file, to notice changes without reading them.

    A path that cannot be listed yields a signature of its own, so its disappearance is noticed.
    """
    try:
        files = policy_files(path)
        return tuple((str(file), file.stat().st_mtime_ns, file.stat().st_size) for file in files)
    except (PolicyLoadError, OSError) as error:
        return ((f"unreadable: {error}", 0, 0),)


def load_policy(path: Path) -> Policy:
    """Load, validate and compile the policy at `path` (a YAML file or a folder of them).

    Raises PolicyLoadError listing every problem found, each with file, line and rule.
    """
    files = policy_files(path)
    problems = ProblemCollector()
    sources: list[tuple[str, bytes]] = []
    for file in files:
        data = _read_file(file, problems)
        if data is not None:
            sources.append((str(file), data))
    return _compile_policy(path, [str(file) for file in files], sources, problems)


def load_policy_sources(path: Path, sources: list[tuple[str, bytes]]) -> Policy:
    """Compile a policy from file contents read earlier, reporting problems under their file names.

    `sources` lists (file name, bytes) in load order, as in `Policy.sources`, so the result has
    the same version as the policy those bytes were first loaded from. Raises PolicyLoadError.
    """
    if not sources:
        raise PolicyLoadError([PolicyProblem(str(path), 0, None, "no policy files to load")])
    return _compile_policy(path, [name for name, _ in sources], sources, ProblemCollector())


def _compile_policy(
    path: Path, files: list[str], sources: list[tuple[str, bytes]], problems: ProblemCollector
) -> Policy:
    assembly = _PolicyAssembly()
    digest = hashlib.sha256()
    for name, data in sources:
        digest.update(data)
        assembly.add_file(name, data, problems)

    defaults = assembly.defaults(problems)
    assembly.check_rules_across_files(problems)
    policy = Policy(
        version=digest.hexdigest()[:12],
        path=str(path),
        files=tuple(files),
        rules=tuple(assembly.rules),
        defaults=defaults,
        catalog=assembly.catalog.complete_catalog(),
        attribute_defaults=assembly.catalog.attribute_defaults(),
        warnings=tuple(assembly.warnings(defaults, [Path(name) for name in files])),
        sources=tuple(sources),
    )
    check_conditions_by_dry_run(policy, problems)
    problems.raise_if_any()
    return policy


def _read_file(file: Path, problems: ProblemCollector) -> bytes | None:
    try:
        size = file.stat().st_size
        if size > MAX_POLICY_FILE_BYTES:
            limit_mib = MAX_POLICY_FILE_BYTES // (1024 * 1024)
            problems.add(str(file), 0, None, f"the file is {size} bytes; the limit is {limit_mib} MiB")
            return None
        return file.read_bytes()
    except OSError as error:
        problems.add(str(file), 0, None, f"cannot read the file: {error.strerror or error}")
        return None


@dataclass
class _DefaultsSection:
    file: str
    line: int
    ttl: int | None
    ttl_line: int
    max_ttl: int | None


@dataclass
class _PolicyAssembly:
    """The rules, catalog and defaults of all files, merged in file order."""

    rules: list[Rule] = field(default_factory=list)
    catalog: CatalogBuilder = field(default_factory=CatalogBuilder)
    defaults_sections: list[_DefaultsSection] = field(default_factory=list)

    def add_file(self, file: str, data: bytes, problems: ProblemCollector) -> None:
        ctx = FileContext(file, problems)
        document = _parse_document(data, ctx)
        if document is None:
            return

        check_keys(document, POLICY_FILE_KEYS, "a policy file", ctx)
        _check_version(document, ctx)
        if "defaults" in document:
            self._add_defaults(document["defaults"], document.line_of("defaults"), ctx)
        if "catalog" in document:
            self.catalog.add_section(document["catalog"], document.line_of("catalog"), ctx)
        if "rules" in document:
            self._add_rules(document["rules"], document.line_of("rules"), ctx)

    def defaults(self, problems: ProblemCollector) -> Defaults:
        """Return the one defaults section (or the built-in values), reporting a second section."""
        if not self.defaults_sections:
            return Defaults()

        first = self.defaults_sections[0]
        for extra in self.defaults_sections[1:]:
            message = f"defaults are already set at {first.file}:{first.line}; keep a single defaults section"
            problems.add(extra.file, extra.line, None, message)

        ttl = first.ttl or DEFAULT_TTL_SECONDS
        max_ttl = first.max_ttl or DEFAULT_MAX_TTL_SECONDS
        if ttl > max_ttl:
            built_in = "" if first.max_ttl else " (the built-in value when max_ttl is unset)"
            message = f"ttl {format_duration(ttl)} is above max_ttl {format_duration(max_ttl)}{built_in}"
            problems.add(first.file, first.ttl_line, "defaults", message)
        return Defaults(ttl=ttl, max_ttl=max_ttl)

    def check_rules_across_files(self, problems: ProblemCollector) -> None:
        """Report duplicate rule names and allow rules that an earlier unconditional allow hides."""
        first_by_name: dict[str, Rule] = {}
        always_allow: Rule | None = None
        for rule in self.rules:
            first = first_by_name.setdefault(rule.name, rule)
            if first is not rule:
                problems.add(rule.file, rule.line, rule.name,
                             f"duplicate rule name (first at {first.file}:{first.line})")

            if rule.effect != "allow":
                continue
            if always_allow is not None:
                message = (
                    f"unreachable: allow rule '{always_allow.name}' at {always_allow.file}:{always_allow.line} "
                    "has no condition and always decides first"
                )
                problems.add(rule.file, rule.line, rule.name, message)
            elif rule.condition.always_true:
                always_allow = rule

    def warnings(self, defaults: Defaults, files: list[Path]) -> list[PolicyProblem]:
        """Return findings that do not stop loading but probably surprise the author."""
        found: list[PolicyProblem] = []
        for rule in self.rules:
            if rule.ttl is not None and rule.ttl > defaults.max_ttl:
                message = (
                    f"ttl {format_duration(rule.ttl)} is above defaults.max_ttl "
                    f"{format_duration(defaults.max_ttl)}; tokens get {format_duration(defaults.max_ttl)}"
                )
                found.append(PolicyProblem(rule.file, rule.line, rule.name, message))

        if not any(rule.effect == "allow" for rule in self.rules):
            found.append(PolicyProblem(str(files[0]), 0, None, "no allow rules: every request is denied"))
        return found

    def _add_defaults(self, value: Any, line: int, ctx: FileContext) -> None:
        mapping = check_mapping(value, "defaults", line, ctx)
        if mapping is None:
            return
        defaults_ctx = ctx.for_rule("defaults")
        check_keys(mapping, DEFAULTS_KEYS, "defaults", defaults_ctx)
        self.defaults_sections.append(
            _DefaultsSection(
                file=ctx.file,
                line=line,
                ttl=_duration(mapping, "ttl", defaults_ctx),
                ttl_line=mapping.line_of("ttl"),
                max_ttl=_duration(mapping, "max_ttl", defaults_ctx),
            )
        )

    def _add_rules(self, value: Any, line: int, ctx: FileContext) -> None:
        entries = check_sequence(value, "rules", line, ctx)
        if entries is None:
            return
        for index, entry in enumerate(entries):
            rule = parse_rule(entry, entries.line_of(index), ctx)
            if rule is not None:
                self.rules.append(rule)


def _parse_document(data: bytes, ctx: FileContext) -> LineMapping | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        ctx.add(0, f"the file is not UTF-8 text (invalid byte at offset {error.start})")
        return None

    try:
        document = parse_yaml(text)
    except YamlSyntaxError as error:
        ctx.add(error.line, error.message)
        return None

    for line, message in document.duplicate_keys:
        ctx.add(line, message)
    return check_mapping(document.value, "a policy file", 1, ctx)


def _check_version(document: LineMapping, ctx: FileContext) -> None:
    if "version" not in document:
        ctx.add(document.line, f"missing required key 'version' (write `version: {SUPPORTED_VERSION}`)")
        return

    version = document["version"]
    if version != SUPPORTED_VERSION or isinstance(version, bool):
        message = f"unsupported version {version!r}; this gateway reads version {SUPPORTED_VERSION}"
        ctx.add(document.line_of("version"), message)


def _duration(mapping: LineMapping, key: str, ctx: FileContext) -> int | None:
    if key not in mapping:
        return None
    try:
        return parse_duration(mapping[key])
    except DurationError as error:
        ctx.add(mapping.line_of(key), f"{key}: {error}")
        return None
