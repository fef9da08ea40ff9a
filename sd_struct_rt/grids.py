"""Contact sheets: images in a labelled grid (rows and columns), for comparisons people judge."""

from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

MARGIN = 6


def contact_sheet(rows: Sequence[Sequence[Image.Image]], row_labels: Sequence[str], column_labels: Sequence[str],
                  title: str = "", scale: int = 1) -> Image.Image:
    """``rows[i][j]`` under column label j, beside row label i; every image at ``scale`` times its size."""
    font = ImageFont.load_default()
    cell_width = max(image.width for row in rows for image in row) * scale
    cell_height = max(image.height for row in rows for image in row) * scale
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    label_width = max([text_size(label)[0] for label in row_labels] + [0]) + 2 * MARGIN
    line = max(text_size("Ag")[1], 10) + MARGIN
    top = line * (2 if title else 1)
    sheet = Image.new("RGB", (label_width + len(column_labels) * (cell_width + MARGIN) + MARGIN,
                              top + len(rows) * (cell_height + MARGIN) + MARGIN), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((MARGIN, MARGIN // 2), title, fill="black", font=font)
    for column, label in enumerate(column_labels):
        draw.text((label_width + column * (cell_width + MARGIN), top - line + MARGIN // 2), label, fill="black",
                  font=font)
    for row, (label, images) in enumerate(zip(row_labels, rows)):
        y = top + row * (cell_height + MARGIN)
        draw.text((MARGIN, y + cell_height // 2 - line // 2), label, fill="black", font=font)
        for column, image in enumerate(images):
            resized = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
            sheet.paste(resized.convert("RGB"), (label_width + column * (cell_width + MARGIN), y))
    return sheet
