"""Model cards: the YAML front matter of a ``README.md``, read and written as the Hugging Face Hub reads it.

The Hub draws its model tree from four fields of a model card's front matter (the ``---``-fenced YAML block at
the top of ``README.md``):

- ``base_model``: the Hub id (``org/name``) of the model this one comes from, or a list of them (a merge);
- ``base_model_relation``: ``adapter``, ``merge``, ``quantized`` or ``finetune`` (when absent the Hub guesses);
- ``library_name`` and ``tags`` (``lora``, ``diffusers``, ``text-to-image`` …).

``read_card`` parses the block with PyYAML's ``safe_load`` only (no tag can build an object or run code) and
checks those fields; ``card_with_lineage`` writes them into a card and keeps every other byte of the file: the
body after the block byte for byte, and inside the block every line of other keys (comments and layout
included), unless the block cannot be edited line by line and still read back the same, in which case the
block alone is written again with ``safe_dump``. The block is found as ``huggingface_hub.repocard`` finds it
(``REGEX_YAML_BLOCK``), after a UTF-8 byte-order mark if any.

With a store: ``card_parents`` finds the bases a card names among the store's models (``import_folder`` records
them as the parents), and ``card_for_export`` writes a snapshot's lineage into its card (``ckpt.export``).
"""

from __future__ import annotations

import functools
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from ckpt.errors import AmbiguousRevisionError, RecordError
from ckpt.interop._state_doc import LAYOUT_KEY
from ckpt.model import Relation, Snapshot

if TYPE_CHECKING:
    from ckpt.store import Store

__all__ = [
    "CARD_FILE",
    "HUB_RELATIONS",
    "MAX_FRONT_MATTER",
    "CardLineage",
    "HubRelation",
    "card_for_export",
    "card_parents",
    "card_with_lineage",
    "find_model",
    "read_card",
]

#: The model card of a Hugging Face folder.
CARD_FILE = "README.md"
#: The largest front matter read, in bytes (real cards hold a few kB; YAML is slow on more).
MAX_FRONT_MATTER = 1 << 20

HubRelation = Literal["adapter", "merge", "quantized", "finetune"]
#: The ``base_model_relation`` values the Hub knows.
HUB_RELATIONS: tuple[str, ...] = get_args(HubRelation)

# huggingface_hub.repocard.REGEX_YAML_BLOCK
_BLOCK = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
_TOP_KEY = re.compile(r"([^\s#:\-?][^:#]*?)\s*:(?:\s|$)")
_BOM = "\ufeff"
_LINEAGE_KEYS = ("base_model", "base_model_relation")
_SHORT = reprlib.Repr()  # keyword arguments need Python 3.12
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60


def _short(value: Any) -> str:
    """A bounded ``repr`` (YAML aliases can make a small file a huge nested value: never print it whole)."""
    return _SHORT.repr(value)


@dataclass(frozen=True)
class CardLineage:
    """What a model card says about where its model comes from.

    Attributes:
        base_models: ``base_model``, as a tuple (empty when the card names none).
        relation: ``base_model_relation``, or ``None`` when absent.
        library_name: ``library_name`` (``diffusers``, ``transformers``, ``peft`` …), or ``None``.
        tags: ``tags``, in order.
        metadata: the whole front matter, as ``safe_load`` gives it (``{}`` without one).
    """

    base_models: tuple[str, ...] = ()
    relation: HubRelation | None = None
    library_name: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"{what} is not UTF-8 text: {e}", hint="save the model card as UTF-8") from None


@functools.cache
def _loader() -> type:
    """PyYAML's ``SafeLoader``, refusing a mapping that holds a key twice (``base_model: a`` then ``base_model: b``:
    YAML forbids it, PyYAML keeps the last silently, stricter parsers refuse it: which base was meant is unknown).
    Keys brought in by a ``<<`` merge may still be overridden, as YAML defines."""
    import yaml

    # the pure-Python SafeLoader on purpose: libyaml's CSafeLoader crashes the process (SIGSEGV) on a front matter
    # nested 50,000 deep, which this one refuses with a RecursionError
    class UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no type hints
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found the key {key_node.value[:80]!r} twice",
                        key_node.start_mark,
                    )
                seen.add(key)
            return cast("dict[Any, Any]", super().construct_mapping(node, deep=deep))

    return UniqueKeyLoader


def _load(block: str, what: str) -> dict[str, Any]:
    import yaml

    if len(block.encode("utf-8")) > MAX_FRONT_MATTER:
        raise RecordError(
            f"{what} has a front matter of more than {MAX_FRONT_MATTER} bytes", hint="shorten the YAML block"
        )
    try:
        doc = yaml.load(block, Loader=_loader())  # a SafeLoader: no tag can build an object
    except yaml.YAMLError as e:
        raise RecordError(
            f"{what} has a front matter that is not valid YAML: {str(e)[:300]}",
            hint="fix the YAML block between the --- lines (the Hub cannot read it either), or leave README.md "
            "out with --exclude README.md",
        ) from None
    except RecursionError:
        raise RecordError(f"{what} has a front matter nested too deeply") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise RecordError(
            f"{what} has a front matter that is a YAML {type(doc).__name__}, not a mapping of keys",
            hint="the block between the --- lines holds key: value lines",
        )
    return doc


def read_card(data: bytes, *, what: str = CARD_FILE) -> CardLineage:
    """Read a model card's front matter and its lineage fields.

    Args:
        data: the bytes of ``README.md``.
        what: how to name the file in errors.

    Returns:
        The lineage; a card without front matter gives an empty one.

    Raises:
        RecordError: not UTF-8; YAML that ``safe_load`` refuses (including any ``!!python`` tag), that gives a
            key twice in one mapping, or that is not a mapping; a front matter over 1 MiB; ``base_model`` that is
            not a string or a list of strings;
            ``base_model_relation`` that is none of ``adapter``, ``merge``, ``quantized``, ``finetune``;
            ``library_name`` not a string; ``tags`` not a list of strings (a lone string is taken as one tag).

    Example:
        >>> card = read_card(b"---\\nbase_model: org/tiny-sd\\nbase_model_relation: adapter\\n---\\n# Style\\n")
        >>> card.base_models, card.relation
        (('org/tiny-sd',), 'adapter')
    """
    text = _text(data, what).removeprefix(_BOM)
    match = _BLOCK.search(text)
    if match is None:
        return CardLineage()
    meta = _load(match.group(2), what)
    base = meta.get("base_model")
    if base is None:
        bases: tuple[str, ...] = ()
    elif isinstance(base, str):
        bases = (base,)
    elif isinstance(base, list) and all(isinstance(b, str) for b in base):
        bases = tuple(base)
    else:
        raise RecordError(
            f"{what}: base_model is {_short(base)}, not a model id or a list of them",
            hint="write base_model: org/name (or a YAML list of ids for a merge)",
        )
    relation = meta.get("base_model_relation")
    if relation is not None and relation not in HUB_RELATIONS:
        raise RecordError(
            f"{what}: base_model_relation is {_short(relation)}; the Hub knows {', '.join(HUB_RELATIONS)}",
            hint="fix the card, or leave the field out (the Hub then infers it)",
        )
    library = meta.get("library_name")
    if library is not None and not isinstance(library, str):
        raise RecordError(f"{what}: library_name is {_short(library)}, not a string")
    tags = meta.get("tags")
    if tags is None:
        tag_list: tuple[str, ...] = ()
    elif isinstance(tags, str):
        tag_list = (tags,)
    elif isinstance(tags, list) and all(isinstance(t, str) for t in tags):
        tag_list = tuple(tags)
    else:
        raise RecordError(f"{what}: tags is {_short(tags)}, not a list of strings")
    return CardLineage(bases, cast("HubRelation | None", relation), library, tag_list, meta)


def _line_break(text: str) -> str:
    for brk in ("\r\n", "\n", "\r"):
        if brk in text:
            return brk
    return "\n"


def _dump(values: Mapping[str, Any], brk: str) -> str:
    import yaml

    out = yaml.safe_dump(dict(values), sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)
    return str(out).replace("\n", brk)


def _blocks(lines: list[str]) -> list[tuple[str | None, list[str]]]:
    """The front matter's lines, cut into top-level keys: ``(key or None, its lines)``.

    A key's lines are its own and the ones below it that are indented, blank, or list items (``- x`` at the
    left edge is a list under the key before it).
    """
    out: list[tuple[str | None, list[str]]] = []
    for line in lines:
        body = line.rstrip("\r\n")
        m = _TOP_KEY.match(body)
        if m is not None and not body.startswith((" ", "\t", "- ")):
            out.append((m.group(1).strip().strip("'\""), [line]))
        elif out and (not body.strip() or body.startswith((" ", "\t", "- ", "-\t")) or body == "-"):
            out[-1][1].append(line)
        else:
            out.append((None, [line]))
    return out


def card_with_lineage(
    data: bytes | None,
    *,
    base_models: Sequence[str],
    relation: HubRelation | None,
    library_name: str | None = None,
    tags: Sequence[str] = (),
    what: str = CARD_FILE,
) -> bytes:
    """A model card whose front matter names the model's base, so that the Hub shows it in its model tree.

    Sets ``base_model`` (a string for one base, a list for several) and ``base_model_relation`` (removed when
    ``relation`` is ``None``), sets ``library_name`` when given and the card has none, and appends the ``tags``
    the card lacks. Everything else is kept: the body after the block byte for byte, a byte-order mark, the
    line breaks, and every line of the other keys, as long as the block edited line by line reads back (with
    ``safe_load``) as the intended mapping; otherwise the block is written again whole with ``safe_dump``
    (comments in it are then lost). Without ``data`` a card holding only the front matter is made.

    Args:
        data: the card's bytes, or ``None``.
        base_models: the bases' Hub ids (``org/name``); empty: ``base_model`` is removed.
        relation: ``adapter``, ``merge``, ``quantized``, ``finetune``, or ``None``.
        library_name: e.g. ``diffusers``.
        tags: tags to have (``lora`` …).
        what: how to name the file in errors.

    Returns:
        The new card's bytes (UTF-8).

    Raises:
        RecordError: as ``read_card`` for the existing card; a relation the Hub does not know.

    Example:
        >>> card_with_lineage(b"# Tiny\\n", base_models=["org/tiny-sd"], relation="finetune").decode()
        '---\\nbase_model: org/tiny-sd\\nbase_model_relation: finetune\\n---\\n# Tiny\\n'
    """
    if relation is not None and relation not in HUB_RELATIONS:
        raise RecordError(f"base_model_relation {relation!r} is not one the Hub knows ({', '.join(HUB_RELATIONS)})")
    text = "" if data is None else _text(data, what)
    bom = _BOM if text.startswith(_BOM) else ""
    text = text.removeprefix(bom)
    brk = _line_break(text)
    match = _BLOCK.search(text)
    old = {} if match is None else _load(match.group(2), what)
    read_card((bom + text).encode("utf-8"), what=what)  # the existing fields are checked as on import

    updates: dict[str, Any] = {}
    if base_models:
        updates["base_model"] = base_models[0] if len(base_models) == 1 else list(base_models)
    if relation is not None and base_models:
        updates["base_model_relation"] = relation
    if library_name is not None and not old.get("library_name"):
        updates["library_name"] = library_name
    old_tags = old.get("tags")
    have = [old_tags] if isinstance(old_tags, str) else list(old_tags or [])
    missing = [t for t in tags if t not in have]
    if missing:
        updates["tags"] = [*have, *missing]
    wanted = {k: v for k, v in old.items() if k not in _LINEAGE_KEYS}
    wanted.update(updates)

    if match is None:
        block = _dump(wanted, brk) if wanted else ""
        head = f"---{brk}{block}---{brk}" if wanted else ""
        return (bom + head + text).encode("utf-8")
    body = match.group(2)
    lines = body.splitlines(keepends=True)
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += brk
    pending = dict(updates)
    out: list[str] = []
    for key, block_lines in _blocks(lines):
        if key in pending:  # a field written again where it stood
            out.append(_dump({key: pending.pop(key)}, brk))
        elif key not in updates and key not in _LINEAGE_KEYS:
            out.extend(block_lines)
    new_block = "".join(out) + (_dump(pending, brk) if pending else "")
    new_block = new_block.removesuffix(brk).removesuffix("\n")
    try:  # the kept lines are verbatim: check the keys, and the values written here (never deep-compare the rest,
        # which YAML aliases can make exponentially large)
        parsed = _load(new_block, what)
        same = set(parsed) == set(wanted) and all(parsed[k] == v for k, v in updates.items())
    except RecordError:
        same = False
    if not same:  # a layout the line edit cannot follow (flow mappings, anchors …): write the block again
        new_block = _dump(wanted, brk).removesuffix(brk) if wanted else ""
    return (bom + text[: match.start(2)] + new_block + text[match.end(2) :]).encode("utf-8")


# -- with a store ------------------------------------------------------------------------------------

_LINE_RELATIONS = ("finetune", "adapter", "merge", "quantized")
_MAX_LINE = 10_000  # continue records walked back to the start of a line, at most


def find_model(store: Store, hub_id: str) -> Snapshot | None:
    """The snapshot a Hub id (``org/name``) stands for in the store, looked up by tag, then by model name.

    In order, for the id and then its last part (``name``): a tag of that name; the head of the one branch
    whose head's model has that name; the newest tagged release of that model. ``None`` when none is found.

    Raises:
        AmbiguousRevisionError: the heads of several branches are models of that name, at different snapshots.
    """
    tags = store.tags()
    names = [hub_id] + ([hub_id.rsplit("/", 1)[1]] if "/" in hub_id.strip("/") else [])
    for name in names:
        if name in tags:
            return store.get(tags[name].id)
    heads = {head: store.get(head) for head in set(store.branches().values())}
    for name in names:
        matches = sorted(sid for sid, snap in heads.items() if snap.model == name)
        if len(matches) > 1:
            raise AmbiguousRevisionError(
                f"the model card's base_model {hub_id!r} matches the heads of several branches: "
                + ", ".join(m[:12] for m in matches[:5]),
                candidates=matches,
                hint="name the parent explicitly (parents=[REV], --parent REV)",
            )
        if matches:
            return heads[matches[0]]
        releases = [store.get(t.id) for t in tags.values()]
        named = [s for s in releases if s.model == name]
        if named:
            return max(named, key=lambda s: s.created_at)
    return None


def card_parents(
    store: Store, data: bytes, *, adapter: bool = False, what: str = CARD_FILE
) -> tuple[list[str], Relation, str | None] | None:
    """The lineage a model card gives a folder being imported: parents, relation and base, if its bases are here.

    Every id in ``base_model`` must be found (``find_model``); otherwise nothing is recorded (the card itself is
    kept with the files). The relation is ``base_model_relation``, or, when the card has none, what the Hub
    infers: ``adapter`` for an adapter folder, ``merge`` for several bases, ``finetune`` otherwise.

    Args:
        store: the store.
        data: the bytes of ``README.md``.
        adapter: the folder is an adapter (a PEFT folder or a LoRA file).
        what: how to name the file in errors.

    Returns:
        ``(parent ids, relation, base id for an adapter else None)``, or ``None``.

    Raises:
        RecordError: as ``read_card``; an ``adapter`` relation with several bases.
        AmbiguousRevisionError: as ``find_model``.
    """
    card = read_card(data, what=what)
    if not card.base_models:
        return None
    found = [find_model(store, m) for m in card.base_models]
    if any(f is None for f in found):
        return None
    ids = list(dict.fromkeys(f.id for f in found if f is not None))
    relation: Relation = card.relation or ("adapter" if adapter else "merge" if len(ids) > 1 else "finetune")
    if relation == "adapter":
        if len(ids) != 1:
            raise RecordError(
                f"{what}: an adapter of {len(ids)} base models ({', '.join(card.base_models)[:200]})",
                hint="an adapter has one base model: fix base_model in the card",
            )
        return ids, relation, ids[0]
    return ids, relation, None


def line_start(store: Store, snap: Snapshot) -> Snapshot:
    """The first snapshot of ``snap``'s line: ``continue`` parents walked back (bounded)."""
    for _ in range(_MAX_LINE):
        if snap.relation != "continue" or not snap.parents:
            return snap
        snap = store.get(snap.parents[0])
    return snap


def card_for_export(
    store: Store, snap: Snapshot, card: bytes | None, *, library_name: str | None = None
) -> bytes | None:
    """The model card to write with a snapshot, its front matter naming the snapshot's bases; ``None``: keep it.

    The bases are the first snapshot of the line's parents (an adapter's: its base), by model name; the
    relation is that snapshot's (``finetune``, ``adapter``, ``merge``, ``quantized``). An imported snapshot
    gives back its folder file for file (no card added or changed), and a line that starts with an imported card
    naming a ``base_model`` keeps it byte for byte (the Hub ids there say more than model names); so does any
    snapshot whose line is not one of those relations or whose bases have no name.

    Raises:
        RecordError: as ``card_with_lineage`` for the existing card.
    """
    if snap.metadata.get(LAYOUT_KEY) is not None:  # an imported folder comes back as it was, file for file
        return None
    start = line_start(store, snap)
    if start.relation not in _LINE_RELATIONS:
        return None
    parent_ids = [start.base] if start.relation == "adapter" and start.base else list(start.parents)
    names = [store.get(p).model for p in parent_ids]
    bases = list(dict.fromkeys(n for n in names if n))
    if not bases:
        return None
    if card is not None and read_card(card).base_models and start.metadata.get(LAYOUT_KEY) is not None:
        return None
    return card_with_lineage(
        card, base_models=bases, relation=cast("HubRelation", start.relation), library_name=library_name
    )
