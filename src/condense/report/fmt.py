"""Number formatting shared by the HTML and Markdown reports (plain text; escaping is the caller's)."""
from __future__ import annotations

DASH = "—"


def fmt_int(x: float | None) -> str:
    return DASH if x is None else f"{int(round(x)):,}"


def fmt_bytes(x: float | None) -> str:
    """Binary units (KiB = 1024 bytes), three significant figures."""
    if x is None:
        return DASH
    v = float(x)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(v) < 1024 or unit == "GiB":
            return f"{int(v)} B" if unit == "B" else f"{v:.3g} {unit}"
        v /= 1024
    return f"{v:.3g} GiB"  # pragma: no cover


def fmt_count(x: float | None) -> str:
    """Decimal SI prefixes for FLOPs and parameter counts: 1.23 M."""
    if x is None:
        return DASH
    v = float(x)
    for unit in ("", "k", "M", "G", "T"):
        if abs(v) < 1000 or unit == "T":
            return f"{v:.3g}{(' ' + unit) if unit else ''}"
        v /= 1000
    return f"{v:.3g} T"  # pragma: no cover


def fmt_ms(x: float | None) -> str:
    if x is None:
        return DASH
    return f"{x:.3g}" if x < 100 else f"{x:,.0f}"


def fmt_acc(x: float | None, scale: float) -> str:
    return DASH if x is None else f"{x * scale:.2f}%"


def fmt_ratio(r: float | None) -> str:
    return "" if r is None else f"×{r:.3g}"


def fmt_pt(d: float | None) -> str:
    return "" if d is None else f"{d:+.2f} pt"
