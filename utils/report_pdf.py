"""The report as a PDF to hand in: A4, the same blocks as report.md (report.py's `Report`), drawn with fpdf2
(pure Python) in the DejaVu fonts that ship with matplotlib.

Headings, paragraphs (**bold** kept, `code` shown plain), tables (images in cells), figures scaled to the
text width and never past the page (small images are enlarged by whole pixels to at least 300 dpi as
printed, so they stay sharp), italic captions, page numbers "n / N" at the foot of every page.
"""
import math
import re
import tempfile
from pathlib import Path

import matplotlib
from fpdf import FPDF
from fpdf.enums import Align, TableCellFillMode, XPos, YPos
from fpdf.fonts import FontFace
from PIL import Image

FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
MARGIN = 18  # mm
PRINT_DPI = 300


class _Document(FPDF):
    # **bold** is the only inline markup the report uses: "--flag", "__init__" and "C:\\" stay as written
    MARKDOWN_ITALICS_MARKER = MARKDOWN_STRIKETHROUGH_MARKER = MARKDOWN_UNDERLINE_MARKER = "\x00\x00"
    MARKDOWN_MARKERS = (FPDF.MARKDOWN_BOLD_MARKER, "\x00\x00")
    MARKDOWN_ESCAPE_CHARACTER = "\x01"

    def footer(self):
        self.set_y(-12)
        self.set_font("sans", "", 8)
        self.set_text_color(110)
        self.cell(0, 6, f"{self.page_no()} / {{nb}}", align="C")
        self.set_text_color(0)


def _plain(text: str) -> str:
    """Inline markdown as the PDF shows it: `code` and link syntax dropped, **bold** kept for fpdf2."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return text.replace("`", "")


def _printable(png: Path, width_mm: float, scratch: Path) -> str:
    """The image file to embed: enlarged by a whole factor (nearest neighbour) when it would print below 300 dpi."""
    with Image.open(png) as im:
        factor = math.ceil(PRINT_DPI * width_mm / 25.4 / im.width)
        if factor <= 1:
            return str(png)
        big = im.convert("RGB").resize((im.width * factor, im.height * factor), Image.NEAREST)
    out = scratch / f"{len(list(scratch.iterdir())):04d}_{png.stem}.png"
    big.save(out)
    return str(out)


def _line(pdf: FPDF, height: float, text: str, **kwargs) -> None:
    """A left-aligned paragraph over the text width, leaving the cursor at the left margin below it."""
    pdf.multi_cell(pdf.epw, height, text, align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT, **kwargs)


def _figure_size(png: Path, width: float, height: float) -> tuple[float, float]:
    """Printed (w, h) in mm: about 100 dpi, at least 60 mm wide, within `width` and `height`."""
    with Image.open(png) as im:
        w_px, h_px = im.size
    w = min(width, max(60.0, w_px * 25.4 / 100))
    h = w * h_px / w_px
    if h > height:
        w, h = w * height / h, height
    return w, h


def _col_widths(header: list[str], rows: list[list], cell_text) -> tuple[float, ...]:
    """Relative column widths from the longest word and the length of each column's text."""
    widths = []
    for i, h in enumerate(header):
        texts = [h] + [("x" * 12 if hasattr(row[i], "path") else _plain(cell_text(row[i]))) for row in rows]
        longest_word = max(len(w) for t in texts for w in (t.split() or [""]))
        longest = max(len(t) for t in texts)
        widths.append(max(4, min(longest_word, 16) + 3, min(longest, 40) * 0.6))
    return tuple(widths)


def write_pdf(blocks: list[tuple], path: Path, title: str, cell_text) -> Path:
    """Draw `blocks` (report.py's `Report.blocks`) into the PDF `path`; `cell_text(cell)` is a table cell's text
    when it is not an image."""
    pdf = _Document(format="A4")
    pdf.set_title(title)
    pdf.set_margins(MARGIN, MARGIN, MARGIN)
    pdf.set_auto_page_break(True, margin=MARGIN)
    for style, name in (("", "DejaVuSans"), ("B", "DejaVuSans-Bold"), ("I", "DejaVuSans-Oblique"),
                        ("BI", "DejaVuSans-BoldOblique")):
        pdf.add_font("sans", style, str(FONTS / f"{name}.ttf"))
    pdf.add_font("mono", "", str(FONTS / "DejaVuSansMono.ttf"))
    pdf.add_page()
    width = pdf.epw  # the text width
    with tempfile.TemporaryDirectory(prefix="report_pdf_") as tmp:
        scratch = Path(tmp)
        for i, (kind, *b) in enumerate(blocks):
            if kind == "heading":
                level, text = b
                size = {1: 17, 2: 13.5, 3: 11}.get(level, 10)
                after = blocks[i + 1] if i + 1 < len(blocks) else None
                need = (55 if level == 2 else 30) + (
                    _figure_size(after[1], width, pdf.eph - 25)[1] if after and after[0] == "figure" else 0)
                if level > 1 and pdf.get_y() + need > pdf.h - MARGIN and pdf.get_y() > MARGIN + 1:
                    pdf.add_page()  # a heading stays with what follows it
                pdf.ln(3 if level > 1 and pdf.get_y() > MARGIN + 1 else 0)
                pdf.set_font("sans", "B", size)
                _line(pdf, size * 0.5, _plain(text))
                pdf.ln(1.5)
            elif kind == "text":
                pdf.set_font("sans", "", 9.5)
                _line(pdf, 4.8, _plain(b[0]), markdown=True)
                pdf.ln(2)
            elif kind == "figure":
                png, caption, number = b
                w, h = _figure_size(png, width, pdf.eph - 25)  # room for the caption on an empty page
                if pdf.get_y() + h + 12 > pdf.h - MARGIN:
                    pdf.add_page()
                pdf.image(_printable(png, w, scratch), x=pdf.l_margin + (width - w) / 2, y=pdf.get_y(), w=w, h=h)
                pdf.set_y(pdf.get_y() + h + 1.5)
                pdf.set_font("sans", "I", 8.5)
                _line(pdf, 4.2, _plain(f"Figure {number}. {caption}"), markdown=True)
                pdf.ln(3)
            elif kind == "table":
                header, rows = b
                pdf.set_font("sans", "", 7 if len(header) > 8 else 8.5)
                widths = _col_widths(header, rows, cell_text)
                with pdf.table(width=min(width, 2.2 * sum(widths)), align="LEFT", col_widths=widths, line_height=3.8,
                               text_align="LEFT", markdown=True, cell_fill_mode=TableCellFillMode.ROWS,
                               cell_fill_color=245, headings_style=FontFace(emphasis="BOLD", fill_color=225)) as table:
                    table.row([_plain(h) for h in header])
                    for row in rows:
                        cells = table.row()
                        for c in row:
                            if hasattr(c, "path"):
                                cells.cell(img=_printable(c.path, 22, scratch), img_fill_width=True)
                            else:
                                cells.cell(_plain(cell_text(c)))
                pdf.ln(3)
            elif kind == "missing":
                what, command = b
                pdf.set_fill_color(255, 244, 229)
                pdf.set_font("sans", "", 9)
                _line(pdf, 4.6, _plain(f"**Not available yet.** {what} To make it, run:"), markdown=True, fill=True)
                pdf.set_font("mono", "", 7.5)
                _line(pdf, 3.8, command, fill=True)
                pdf.ln(3)
        pdf.output(str(path))
    return path

