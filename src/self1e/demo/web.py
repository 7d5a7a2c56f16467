"""The web demo (gradio, installed with the ``demo`` extra): upload an image, type expressions,
see the masks; or ask a question and chat. The logic lives in plain functions, tested without gradio.
"""
from __future__ import annotations

from typing import Any

from PIL import Image

from self1e.common.images import ImageLike, to_rgb
from self1e.common.overlay import draw_masks

PALETTE = ((230, 40, 40), (40, 110, 230), (40, 170, 70), (240, 170, 20), (160, 60, 200), (20, 180, 190))


def segment_expressions(predictor, image: ImageLike | None,
                        text_block: str) -> tuple[Image.Image, list[dict[str, Any]]]:
    """One expression per non-empty line of ``text_block``, all in one batched pass.
    Returns the image with every mask drawn in its own colour, and one summary row per expression."""
    texts = [t.strip() for t in (text_block or "").splitlines() if t.strip()]
    if image is None:
        raise ValueError("upload an image first")
    if not texts:
        raise ValueError("type at least one expression (one per line)")
    rgb = to_rgb(image)
    predictor.set_image(rgb)
    results = predictor.predict_batch(texts)
    colors = [PALETTE[k % len(PALETTE)] for k in range(len(results))]
    rows = [{"expression": r.text, "colour": "#{:02x}{:02x}{:02x}".format(*c), "pixels": int(r.mask.sum()),
             "score": round(r.score, 3), "empty": r.empty} for r, c in zip(results, colors)]
    return draw_masks(rgb, [r.mask for r in results], colors), rows


def chat_turn(predictor, image: ImageLike | None, question: str) -> tuple[str, Image.Image | None]:
    """A free-form answer; when the model answers with [SEG], also every mask drawn on the image."""
    if image is None:
        raise ValueError("upload an image first")
    rgb = to_rgb(image)
    predictor.set_image(rgb)
    response = predictor.chat(question)
    if not response.segments:
        return response.text, None
    colors = [PALETTE[k % len(PALETTE)] for k in range(len(response.segments))]
    return response.text, draw_masks(rgb, response.masks, colors)


def build_app(predictor):
    """The gradio Blocks app around ``predictor``."""
    try:
        import gradio as gr
    except ImportError:
        raise ValueError("the web demo needs gradio: pip install 'self1e[demo]'") from None

    def on_segment(image, text_block):
        try:
            return segment_expressions(predictor, image, text_block)
        except ValueError as e:
            raise gr.Error(str(e)) from None

    def on_chat(image, question):
        try:
            return chat_turn(predictor, image, question)
        except ValueError as e:
            raise gr.Error(str(e)) from None

    with gr.Blocks(title="self1e") as app:
        gr.Markdown("# self1e: segmentation with one [SEG] token\nOne expression per line.")
        with gr.Row():
            image = gr.Image(type="pil", label="image")
            result = gr.Image(type="pil", label="masks")
        text = gr.Textbox(lines=3, label="expressions", placeholder="the red circle\nall the boxes")
        table = gr.JSON(label="results")
        gr.Button("Segment").click(on_segment, [image, text], [result, table])
        question = gr.Textbox(label="chat: ask about the image")
        answer = gr.Textbox(label="answer")
        chat_mask = gr.Image(type="pil", label="mask from the answer's [SEG]")
        gr.Button("Ask").click(on_chat, [image, question], [answer, chat_mask])
    return app
