"""The projector's output tokens for synthetic scenes: what the decoder reads in place of <|image|>."""
import make_data as D
import torch


def image_tokens(model, proc, seeds: list[int], batch: int = 100) -> torch.Tensor:
    """[len(seeds), tiles, tokens per tile, hidden] f32, scenes rendered from `seeds`, pixels from `proc`."""
    out = []
    for i in range(0, len(seeds), batch):
        scenes = [D.make_scene(s) for s in seeds[i:i + batch]]
        pv = proc.image_processor(images=[D.render(s) for s in scenes], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            f = model.model.get_image_features(pixel_values=pv.float())
        f = f.pooler_output if hasattr(f, "pooler_output") else f
        f = torch.as_tensor(f if not isinstance(f, (list, tuple)) else torch.cat(list(f))).float()
        out.append(f.reshape(len(scenes), pv.shape[1], -1, f.shape[-1]))
    return torch.cat(out)
