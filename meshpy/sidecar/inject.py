"""`meshpy inject`: add the sidecar to every Pod template of a stream of Kubernetes manifests.

The stream is split on its document separators by hand, so that a document left alone (another kind,
opted out, already injected) is written back exactly as it was read, comments and all. Only a changed
document is dumped again, with its keys in their original order; the comment lines before and after
its content are kept, those inside it are lost (PyYAML does not read comments). The work on one Pod
template is in inject_pod.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshpy.sidecar.inject_pod import InjectError, InjectOptions, Outcome, inject_template

__all__ = ["InjectError", "InjectOptions", "InjectResult", "inject_text"]

# Where the Pod template is, by kind; () is the object itself (a bare Pod).
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
# A document starts at a line that is `---` alone or followed by a space (and maybe content).
_SEPARATOR = re.compile(r"^---(?=[ \t]|\r?$)", re.MULTILINE)
_NOT_CONTENT = re.compile(r"^[ \t]*(#.*)?\r?$")
_BARE_SEPARATOR = re.compile(r"^---[ \t]*(#.*)?\r?\n?$")


@dataclass
class InjectResult:
    text: str
    notes: list[str] = field(default_factory=list)  # for standard error: what was skipped and why
    injected: int = 0


def split_documents(text: str) -> list[str]:
    """The stream cut before each separator line: joining the pieces gives the text back."""
    starts = [_before_directives(text, m.start()) for m in _SEPARATOR.finditer(text)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def _before_directives(text: str, start: int) -> int:
    """Where a document begins: its directives (`%YAML 1.2`) come before its separator line."""
    while start > 0:
        line_start = text.rfind("\n", 0, start - 1) + 1
        if not text.startswith("%", line_start):
            break
        start = line_start
    return start


def _label(index: int, doc: dict[str, Any]) -> str:
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return f"document {index} ({doc.get('kind')} {name})" if name else f"document {index} ({doc.get('kind')})"


def _template(obj: dict[str, Any], path: tuple[str, ...], where: str) -> dict[str, Any]:
    node: Any = obj
    for i, key in enumerate(path):
        node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise InjectError(f"{where}: {'.'.join(path[: i + 1])} is missing or not a mapping")
    assert isinstance(node, dict)
    return node


def _inject_object(obj: dict[str, Any], where: str, options: InjectOptions, result: InjectResult) -> bool:
    """Inject one object in place; True when it changed."""
    kind = obj.get("kind")
    if kind == "List":
        items = obj.get("items")
        if not isinstance(items, list):
            raise InjectError(f"{where}.items: expected a list")
        changed = False
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise InjectError(f"{where}.items[{i}]: expected a mapping, got {type(item).__name__}")
            changed |= _inject_object(item, f"{where}.items[{i}] ({item.get('kind')})", options, result)
        return changed
    if not isinstance(kind, str) or kind not in TEMPLATE_PATHS:
        return False
    path = TEMPLATE_PATHS[kind]
    template_where = f"{where}: {'.'.join(path)}" if path else where
    template = _template(obj, path, where)
    outcome = inject_template(template, obj, options, template_where)
    if outcome.outcome is Outcome.HOST_NETWORK:
        result.notes.append(f"{where}: not injected: hostNetwork is true (the rules would capture the "
                            "node's traffic)")
    if outcome.outcome is not Outcome.INJECTED:
        return False
    result.injected += 1
    result.notes.extend(outcome.notes)
    restart = _template_spec(template).get("restartPolicy", "Always")
    if not outcome.native and (kind in ("Job", "CronJob") or restart != "Always"):
        result.notes.append(
            f"{where}: a classic sidecar keeps the pod running after the app exits: have the app call "
            "POST http://127.0.0.1:15000/quitquitquit when it is done, or use --mode native"
        )
    return True


def _template_spec(template: dict[str, Any]) -> dict[str, Any]:
    spec = template.get("spec")
    return spec if isinstance(spec, dict) else {}


def _redump(piece: str, obj: Any) -> str:
    """A changed document: its separator line and outer comment lines kept, its content dumped anew."""
    lines = piece.splitlines(keepends=True)
    head: list[str] = []
    while lines and lines[0].startswith("%"):
        head.append(lines.pop(0))
    if lines and _SEPARATOR.match(lines[0]):
        # Kept as written unless content follows it on the same line (`--- {kind: Pod, ...}`).
        head.append(lines[0] if _BARE_SEPARATOR.match(lines[0]) else "---\n")
        lines = lines[1:]
    while lines and _NOT_CONTENT.match(lines[0]):
        head.append(lines.pop(0))
    tail: list[str] = []
    while lines and _NOT_CONTENT.match(lines[-1]):
        tail.insert(0, lines.pop())
    if tail and not tail[-1].endswith("\n"):
        tail[-1] += "\n"
    body = yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return "".join(head) + body + "".join(tail)


def _parse(pieces: list[str]) -> list[tuple[int, Any]]:
    """Each piece's document number (from 1, as a reader counts them) and its content."""
    out: list[tuple[int, Any]] = []
    number = 0
    for i, piece in enumerate(pieces):
        try:
            doc = yaml.safe_load(piece)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            before = sum(p.count("\n") for p in pieces[:i])
            at = f" (line {before + mark.line + 1})" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise InjectError(f"document {number + 1}: not YAML{at}: {problem}") from None
        # Comments before the first separator are not a document of their own.
        if not (i == 0 and doc is None and len(pieces) > 1 and not _SEPARATOR.match(piece)):
            number += 1
        out.append((number, doc))
    return out


def inject_text(text: str, options: InjectOptions) -> InjectResult:
    """The stream with the sidecar in every Pod template; raises InjectError naming the document."""
    pieces = split_documents(text)
    parsed = _parse(pieces)
    # YAML forbids a `---` at column 0 inside content, so the split above is the parser's; this check
    # keeps it honest for what it does not model (directives, say) rather than merge or cut documents.
    try:
        whole = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        raise InjectError(f"the stream is not YAML: {err}") from None
    if [p for _, p in parsed if p is not None] != [d for d in whole if d is not None]:
        raise InjectError("the stream's document separators could not be told apart from its content")
    result = InjectResult(text="")
    out: list[str] = []
    for piece, (index, doc) in zip(pieces, parsed, strict=True):
        if doc is None:
            out.append(piece)  # comments only, or an empty document
            continue
        if not isinstance(doc, dict):
            raise InjectError(f"document {index}: expected a mapping (a Kubernetes object), "
                              f"got {type(doc).__name__}")
        changed_doc = copy.deepcopy(doc)
        if _inject_object(changed_doc, _label(index, doc), options, result):
            out.append(_redump(piece, changed_doc))
        else:
            out.append(piece)
    result.text = "".join(out)
    return result
