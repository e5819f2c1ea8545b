"""Gate evaluation report: returns the path of an HTML page with a score histogram and a confusion
matrix, drawn as PNG with Pillow (no plotting library needed)."""

from __future__ import annotations

import html
from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 640, 320, 40


def write_gate_report(report: dict, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _histogram(report["cases"]).save(folder / "scores.png")
    sections = []
    for domain, stats in report["summary"]["domains"].items():
        _confusion(stats["confusion"], domain).save(folder / f"confusion-{domain}.png")
        sections.append(
            f"<h2>{html.escape(domain)}</h2><p>in-scope acceptance {stats['in_scope_acceptance']}, "
            f"out-of-scope refusal {stats['out_of_scope_refusal']}</p>"
            f"<img src='confusion-{html.escape(domain)}.png' alt='confusion matrix {html.escape(domain)}'>")
    errors = "".join(
        f"<tr><td>{html.escape(c['id'])}</td><td>{html.escape(c['message'])}</td><td>{c['expect']}</td>"
        f"<td>{c['got']}</td><td>{c['score']}</td><td>{html.escape(c['reason'])}</td></tr>"
        for c in report["cases"] if not c["ok"])
    page = folder / "index.html"
    page.write_text(
        "<!doctype html><meta charset='utf-8'><title>GuardedChat gate report</title>"
        f"<h1>Gate evaluation</h1><p>{report['summary']['cases']} cases, accuracy {report['summary']['accuracy']}</p>"
        "<h2>Score histogram (green: expected allow, red: expected refuse)</h2><img src='scores.png' alt='scores'>"
        + "".join(sections)
        + "<h2>Errors</h2><table border=1><tr><th>id</th><th>message</th><th>expect</th><th>got</th>"
          "<th>score</th><th>reason</th></tr>" + errors + "</table>", encoding="utf-8")
    return page


def _histogram(cases: list[dict], bins: int = 20) -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    counts = {kind: [0] * bins for kind in ("allow", "refuse")}
    for case in cases:
        counts[case["expect"]][min(bins - 1, int(case["score"] * bins))] += 1
    tallest = max(max(c) for c in counts.values()) or 1
    slot = (WIDTH - 2 * MARGIN) / bins
    for index in range(bins):
        for offset, (kind, colour) in enumerate((("allow", (46, 139, 87)), ("refuse", (205, 55, 55)))):
            height = (HEIGHT - 2 * MARGIN) * counts[kind][index] / tallest
            left = MARGIN + index * slot + offset * slot / 2
            draw.rectangle([left, HEIGHT - MARGIN - height, left + slot / 2 - 1, HEIGHT - MARGIN], fill=colour)
    draw.line([MARGIN, HEIGHT - MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN], fill="black")
    for tick in range(0, 11, 2):
        x = MARGIN + (WIDTH - 2 * MARGIN) * tick / 10
        draw.text((x - 8, HEIGHT - MARGIN + 6), f"{tick / 10:.1f}", fill="black")
    draw.text((MARGIN, 10), f"gate score (max bin {tallest} cases)", fill="black")
    return image


def _confusion(confusion: dict, domain: str) -> Image.Image:
    size, cell = 300, 110
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    total = sum(v for row in confusion.values() for v in row.values()) or 1
    for r, expect in enumerate(("allow", "refuse")):
        for c, got in enumerate(("allow", "refuse")):
            value = confusion[f"expect_{expect}"][f"got_{got}"]
            shade = 255 - int(200 * value / total)
            x, y = 70 + c * cell, 70 + r * cell
            draw.rectangle([x, y, x + cell - 4, y + cell - 4], fill=(shade, shade, 255), outline="black")
            draw.text((x + cell / 2 - 10, y + cell / 2 - 6), str(value), fill="black")
        draw.text((4, 70 + r * cell + cell / 2 - 6), f"exp {expect}", fill="black")
    for c, got in enumerate(("allow", "refuse")):
        draw.text((70 + c * cell + 20, 50), f"got {got}", fill="black")
    draw.text((4, 10), f"{domain}: rows expected, columns got", fill="black")
    return image
