"""Pictures of the explorer, drawn on the server as inline SVG (readable without JavaScript).

* :func:`growth_chart`: tree size over time, from sampled checkpoints.
* :func:`inclusion_picture`: an inclusion proof as the path from the leaf to the root, each
  step with its sibling subtree (RFC 6962 §2.1.1 ``PATH``), drawn as a ladder so that deep
  trees stay readable: the path runs up the middle, each sibling sits on the side it is
  hashed from.
* :func:`consistency_picture`: a consistency proof as the leaf ranges its hashes cover
  (RFC 6962 §2.1.2 ``SUBPROOF``), over the two trees.

The geometry comes from pure functions on sizes (:func:`inclusion_steps`,
:func:`consistency_ranges`) that follow the RFC's recursive definitions, so a picture shows
which subtree each proof hash stands for. Every picture has a ``<title>`` and ``<desc>``; the
pages also list the same hashes in a table for screen readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from merkle.hashing import node_hash
from server.explorer.markup import Markup, format_time_ms, join, render, short_hex

__all__ = [
    "InclusionStep",
    "LeafRange",
    "consistency_picture",
    "consistency_ranges",
    "growth_chart",
    "inclusion_picture",
    "inclusion_steps",
    "largest_power_of_two_below",
]


@dataclass(frozen=True, slots=True, order=True)
class LeafRange:
    """Leaves ``start`` to ``end - 1``: the subtree whose hash is ``MTH(D[start:end])``."""

    start: int
    end: int

    def label(self) -> str:
        """Return "leaf 4" or "leaves 4–7"."""
        if self.end - self.start == 1:
            return f"leaf {self.start}"
        return f"leaves {self.start}–{self.end - 1}"


@dataclass(frozen=True, slots=True)
class InclusionStep:
    """One level of an inclusion proof, from the leaf upward.

    ``path`` is the subtree on the path (it holds the leaf), ``sibling`` the subtree whose
    hash is the proof hash of this level; ``sibling_left`` tells whether the sibling is
    hashed on the left (``node_hash(sibling, path)``).
    """

    path: LeafRange
    sibling: LeafRange

    @property
    def sibling_left(self) -> bool:
        """Whether the sibling subtree lies left of the path subtree."""
        return self.sibling.start < self.path.start


def largest_power_of_two_below(n: int) -> int:
    """Return the largest power of two strictly below ``n`` (RFC 6962 §2.1 ``k``).

    Requires ``n >= 2``. Raises ValueError otherwise. Example: 8 for 9, 4 for 8.
    """
    if n < 2:
        raise ValueError("n must be at least 2")
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_steps(index: int, tree_size: int) -> list[InclusionStep]:
    """Return the subtrees of ``PATH(index, D[tree_size])``, leaf level first (RFC 6962 §2.1.1).

    Requires ``0 <= index < tree_size``. Raises ValueError otherwise. The list has one step
    per proof hash, in proof order. Example: index 2 of 5 gives
    ``leaf 3``, ``leaves 0–1``, ``leaf 4`` as siblings.
    """
    if not 0 <= index < tree_size:
        raise ValueError("index must be below the tree size")
    steps: list[InclusionStep] = []
    start, end = 0, tree_size
    while end - start > 1:
        middle = start + largest_power_of_two_below(end - start)
        if index < middle:
            steps.append(InclusionStep(LeafRange(start, middle), LeafRange(middle, end)))
            end = middle
        else:
            steps.append(InclusionStep(LeafRange(middle, end), LeafRange(start, middle)))
            start = middle
    steps.reverse()
    return steps


def consistency_ranges(first_size: int, second_size: int) -> list[LeafRange]:
    """Return the subtree of each hash of ``PROOF(first_size, D[second_size])``, in proof order.

    RFC 6962 §2.1.2 ``SUBPROOF``. Requires ``0 <= first_size <= second_size``; the list is
    empty when ``first_size`` is 0 or equals ``second_size``. Raises ValueError otherwise.
    Example: 3 of 7 gives ``leaf 2``, ``leaf 3``, ``leaves 0–1``, ``leaves 4–6``.
    """
    if not 0 <= first_size <= second_size:
        raise ValueError("first size must be between 0 and the second size")
    out: list[LeafRange] = []
    if first_size == 0 or first_size == second_size:
        return out
    # Iterative form of SUBPROOF(m, D[start:end], b): descend, remembering the siblings.
    siblings: list[LeafRange] = []
    m, start, end, complete = first_size, 0, second_size, True
    while m != end - start:
        k = largest_power_of_two_below(end - start)
        if m <= k:
            siblings.append(LeafRange(start + k, end))
            end = start + k
        else:
            siblings.append(LeafRange(start, start + k))
            m -= k
            start += k
            complete = False
    if not complete:
        out.append(LeafRange(start, end))
    out.extend(reversed(siblings))
    return out


def path_hashes(leaf: bytes, steps: Sequence[InclusionStep], proof: Sequence[bytes]) -> list[bytes]:
    """Return the hash of each path subtree above the leaf: the last one is the root.

    Requires one proof hash per step (RFC 6962 §2.1.1: the hash of the step's sibling).
    Raises ValueError otherwise.
    """
    if len(steps) != len(proof):
        raise ValueError("one proof hash per step is required")
    value = leaf
    out: list[bytes] = []
    for step, sibling in zip(steps, proof, strict=True):
        value = node_hash(sibling, value) if step.sibling_left else node_hash(value, sibling)
        out.append(value)
    return out


# -- drawing ----------------------------------------------------------------------------------

_WIDTH = 640
_BOX_W = 196
_BOX_H = 40
_ROW = 66


def _box(x: float, y: float, kind: str, top: str, bottom: str, title: str) -> Markup:
    return render(
        '<g class="node $kind"><title>$title</title>'
        '<rect x="$x" y="$y" width="$w" height="$h" rx="6"/>'
        '<text x="$tx" y="$ty1" text-anchor="middle">$top</text>'
        '<text x="$tx" y="$ty2" text-anchor="middle" class="hash">$bottom</text></g>\n',
        kind=kind,
        title=title,
        x=f"{x:.0f}",
        y=f"{y:.0f}",
        w=_BOX_W,
        h=_BOX_H,
        tx=f"{x + _BOX_W / 2:.0f}",
        ty1=f"{y + 16:.0f}",
        ty2=f"{y + 32:.0f}",
        top=top,
        bottom=bottom,
    )


def _line(x1: float, y1: float, x2: float, y2: float, kind: str = "edge") -> Markup:
    return render(
        '<line class="$kind" x1="$x1" y1="$y1" x2="$x2" y2="$y2"/>\n',
        kind=kind,
        x1=f"{x1:.0f}",
        y1=f"{y1:.0f}",
        x2=f"{x2:.0f}",
        y2=f"{y2:.0f}",
    )


def inclusion_picture(
    index: int,
    tree_size: int,
    leaf: bytes,
    proof: Sequence[bytes],
    checkpoint_root: bytes | None,
) -> Markup:
    """Return the SVG of an inclusion proof: leaf at the bottom, root at the top.

    Path nodes are filled boxes up the middle; each sibling (a proof hash) is an outlined box
    on its side, joined to the parent it is hashed into. The root box says whether it equals
    ``checkpoint_root``. Requires a proof of the right length for (index, tree_size).
    Raises ValueError otherwise.
    """
    steps = inclusion_steps(index, tree_size)
    hashes = path_hashes(leaf, steps, proof)
    levels = len(steps)
    height = (levels + 1) * _ROW + 24
    center = (_WIDTH - _BOX_W) / 2
    parts: list[Markup] = []

    def row_y(level: int) -> float:  # level 0 = leaf (bottom)
        return 12 + (levels - level) * _ROW

    for level, (step, sibling) in enumerate(zip(steps, proof, strict=True)):
        y_child = row_y(level)
        y_parent = row_y(level + 1)
        sibling_x = 8 if step.sibling_left else _WIDTH - _BOX_W - 8
        sibling_x = min(max(sibling_x, 0), _WIDTH - _BOX_W)
        parts.append(_line(center + _BOX_W / 2, y_parent + _BOX_H, center + _BOX_W / 2, y_child))
        parts.append(
            _line(center + _BOX_W / 2, y_parent + _BOX_H, sibling_x + _BOX_W / 2, y_child, "edge")
        )
        side = "left" if step.sibling_left else "right"
        parts.append(
            _box(
                sibling_x,
                y_child,
                "sibling",
                f"proof {level + 1}: {step.sibling.label()}",
                short_hex(sibling, 16),
                f"proof hash {level + 1} ({side} sibling, {step.sibling.label()}): {sibling.hex()}",
            )
        )
    parts.append(
        _box(
            center,
            row_y(0),
            "leaf",
            f"leaf {index}",
            short_hex(leaf, 16),
            f"leaf hash {leaf.hex()}",
        )
    )
    for level, (step, value) in enumerate(zip(steps, hashes, strict=True), 1):
        parent = LeafRange(
            min(step.path.start, step.sibling.start), max(step.path.end, step.sibling.end)
        )
        is_root = level == levels
        kind = "path"
        top = parent.label()
        if is_root:
            matches = checkpoint_root is not None and value == checkpoint_root
            kind = "root ok" if matches else "root bad"
            top = "root = checkpoint ✓" if matches else "root ≠ checkpoint ✗"
        parts.append(
            _box(center, row_y(level), kind, top, short_hex(value, 16), f"{top}: {value.hex()}")
        )
    if levels == 0:
        matches = checkpoint_root is not None and leaf == checkpoint_root
        parts.append(
            render(
                '<text x="$x" y="$y" text-anchor="middle">$label</text>\n',
                x=_WIDTH // 2,
                y=f"{row_y(0) + _BOX_H + 18:.0f}",
                label="one-leaf tree: the leaf is the root" + (" ✓" if matches else " ✗"),
            )
        )
        height += 24
    description = (
        f"Inclusion proof of leaf {index} in a tree of {tree_size} leaves: {levels} sibling "
        "hashes, combined from the leaf upward into the root."
    )
    return render(
        '<svg class="proof-tree" viewBox="0 0 $w $h" role="img" aria-labelledby="$id-t $id-d"'
        ' xmlns="http://www.w3.org/2000/svg">'
        '<title id="$id-t">Inclusion proof</title><desc id="$id-d">$desc</desc>\n$parts</svg>',
        w=_WIDTH,
        h=height,
        id="inclusion",
        desc=description,
        parts=join(parts),
    )


def consistency_picture(first_size: int, second_size: int, proof: Sequence[bytes]) -> Markup:
    """Return the SVG of a consistency proof: one row per proof hash, over the leaf axis.

    The axis spans the ``second_size`` leaves; the shaded band is the older tree's
    ``first_size`` leaves. Each row shows a proof hash as a bar over the leaves its subtree
    covers. Requires a proof of the right length. Raises ValueError otherwise.
    """
    ranges = consistency_ranges(first_size, second_size)
    if len(ranges) != len(proof):
        raise ValueError("the proof does not have the length its sizes require")
    left, right = 250, _WIDTH - 16
    span = right - left

    def x_of(leaf: int) -> float:
        return left + span * leaf / max(second_size, 1)

    top = 40
    height = top + max(len(ranges), 1) * 34 + 30
    parts: list[Markup] = [
        render(
            '<rect class="old-tree" x="$x" y="$y" width="$w" height="$h"/>\n'
            '<text x="$x" y="16" class="axis">old tree: $first leaves</text>\n'
            '<text x="$r" y="32" text-anchor="end" class="axis">new tree: $second leaves</text>\n',
            x=left,
            y=top - 6,
            w=f"{x_of(first_size) - left:.1f}",
            h=height - top - 18,
            r=right,
            first=first_size,
            second=second_size,
        ),
        _line(left, height - 22, right, height - 22, "axis-line"),
        render(
            '<text x="$l" y="$y" class="axis">0</text>'
            '<text x="$r" y="$y" text-anchor="end" class="axis">$n</text>\n',
            l=left,
            r=right,
            y=height - 6,
            n=second_size,
        ),
    ]
    for row, (leaves, value) in enumerate(zip(ranges, proof, strict=True)):
        y = top + row * 34
        x1 = x_of(leaves.start)
        width = max(x_of(leaves.end) - x1, 3.0)
        old = "old" if leaves.end <= first_size else "new"
        parts.append(
            render(
                '<g class="range $old"><title>proof hash $n ($label): $full</title>'
                '<text x="8" y="$ty" class="hash">$n. $short</text>'
                '<text x="8" y="$ty2" class="axis">$label</text>'
                '<rect x="$x" y="$y" width="$w" height="20" rx="3"/></g>\n',
                old=old,
                n=row + 1,
                label=leaves.label(),
                full=value.hex(),
                short=short_hex(value, 16),
                ty=f"{y + 8:.0f}",
                ty2=f"{y + 22:.0f}",
                x=f"{x1:.1f}",
                y=f"{y:.0f}",
                w=f"{width:.1f}",
            )
        )
    description = (
        f"Consistency proof from {first_size} to {second_size} leaves: {len(ranges)} hashes, "
        "each covering the leaf range shown by its bar."
    )
    return render(
        '<svg class="consistency" viewBox="0 0 $w $h" role="img" aria-labelledby="cons-t cons-d"'
        ' xmlns="http://www.w3.org/2000/svg"><title id="cons-t">Consistency proof</title>'
        '<desc id="cons-d">$desc</desc>\n$parts</svg>',
        w=_WIDTH,
        h=height,
        desc=description,
        parts=join(parts),
    )


def growth_chart(points: Sequence[tuple[int, int]]) -> Markup:
    """Return the SVG line chart of tree size over log time.

    ``points`` are ``(log time in POSIX ms, tree size)``, in any order; at least two distinct
    times are needed for a chart, otherwise a short note is returned instead.
    """
    ordered = sorted(points)
    if len(ordered) < 2 or ordered[0][0] == ordered[-1][0]:
        return Markup('<p class="note">Not enough history yet to draw growth over time.</p>')
    t0, t1 = ordered[0][0], ordered[-1][0]
    top_size = max(size for _, size in ordered) or 1
    left, right, top, bottom = 64, _WIDTH - 12, 12, 200

    def xy(t: int, size: int) -> str:
        x = left + (right - left) * (t - t0) / (t1 - t0)
        y = bottom - (bottom - top) * size / top_size
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(t, s) for t, s in ordered)
    area = f"{left},{bottom} {line} {right},{bottom}"
    description = (
        f"Tree size grew from {ordered[0][1]} at {format_time_ms(t0)} "
        f"to {ordered[-1][1]} at {format_time_ms(t1)}."
    )
    return render(
        '<svg class="chart" viewBox="0 0 $w 240" role="img" aria-labelledby="growth-t growth-d"'
        ' xmlns="http://www.w3.org/2000/svg"><title id="growth-t">Tree size over time</title>'
        '<desc id="growth-d">$desc</desc>\n'
        '<polygon class="area" points="$area"/>\n<polyline class="line" points="$line"/>\n'
        '<line class="axis-line" x1="$l" y1="$b" x2="$r" y2="$b"/>'
        '<line class="axis-line" x1="$l" y1="$t" x2="$l" y2="$b"/>\n'
        '<text class="axis" x="$lt" y="$ty" text-anchor="end">$max</text>'
        '<text class="axis" x="$lt" y="$b" text-anchor="end">0</text>\n'
        '<text class="axis" x="$l" y="222">$start</text>'
        '<text class="axis" x="$r" y="222" text-anchor="end">$end</text></svg>',
        w=_WIDTH,
        desc=description,
        area=area,
        line=line,
        l=left,
        r=right,
        t=top,
        b=bottom,
        lt=left - 6,
        ty=top + 10,
        max=top_size,
        start=format_time_ms(t0),
        end=format_time_ms(t1),
    )
