"""Drawing detections on images (Pillow), for the demo and the serving client."""
import os

PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40))


def draw_detections(image, detections):
    """A PIL image of `image` ([H, W, 3] uint8) with each detection's box and "name score".

    detections: dicts with "box" (x1, y1, x2, y2 in the image's pixels), "class" (the label),
    "class_index" (picks the colour) and "score"."""
    from PIL import Image, ImageDraw, ImageFont
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = max(1, round(min(canvas.size) / 250))
    for det in sorted(detections, key=lambda d: d["score"]):  # best drawn last, on top
        color = PALETTE[det["class_index"] % len(PALETTE)]
        bx1, by1, bx2, by2 = det["box"]
        x1, y1, x2, y2 = min(bx1, bx2), min(by1, by2), max(bx1, bx2), max(by1, by2)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        label = f"{det['class']} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tw, th = right - left + 4, bottom - top + 4
        ty = y1 - th if y1 - th >= 0 else y1  # above the box when there is room
        draw.rectangle([x1, ty, x1 + tw, ty + th], fill=color)
        draw.text((x1 + 2 - left, ty + 2 - top), label, fill=(0, 0, 0), font=font)
    return canvas


def output_names(paths):
    """<stem> per image, made unique (stem, stem_2, ...) when two images share a name."""
    names, seen = [], {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return names
