import * as path from 'path';
import { ChatTemplate } from '../lib/chat_template';
import { PlmError } from '../lib/errors';
import { buildPrompt, MediaProcessors, PromptModelInfo } from '../lib/prompt';
import { PlmTokenizer } from '../lib/tokenizer';

const ROOT = path.resolve(__dirname, '..');
const tok = PlmTokenizer.fromDirectory(path.join(ROOT, 'models', 'plm-tiny-random'));
const template = ChatTemplate.builtin(tok.config);

const S = 2; // tile side of the fake preprocessors
const TPT = 4; // tokens per tile
const IMG = 128002;
const VID = 128003;
const BOS = 128000;

const info: PromptModelInfo = {
  imageTokenId: IMG,
  videoTokenId: VID,
  tokensPerTile: TPT,
  maxContext: 1000,
  bosTokenId: BOS,
  visionPresent: true,
  tileSize: S,
  maxNumTiles: 36,
  numFrames: 3,
};

/** Fake media: an "image" is its tile count; every pixel of item k holds the value `id`. */
interface FakeImage {
  id: number;
  tiles: number;
}
interface FakeVideo {
  id: number;
  frames: number;
}
const calls: string[] = [];
const media: MediaProcessors<FakeImage, FakeVideo> = {
  image: async (img, opts) => {
    calls.push(`image${img.id}:${opts.maxNumTiles}`);
    const tiles = Math.min(img.tiles, opts.maxNumTiles + 1);
    return { pixelValues: new Float32Array(tiles * 3 * opts.tileSize * opts.tileSize).fill(img.id), numTiles: tiles };
  },
  video: async (vid, opts) => {
    calls.push(`video${vid.id}:${opts.numFrames}`);
    const n = Math.min(vid.frames, opts.numFrames);
    return { pixelValues: new Float32Array(n * 3 * opts.size * opts.size).fill(vid.id), numFrames: n };
  },
};

const PER_TILE = 3 * S * S;

function runs(ids: Int32Array): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const id of ids) {
    const last = out[out.length - 1];
    if (last && last[0] === id) last[1]++;
    else out.push([id, 1]);
  }
  return out.filter(([id]) => id === IMG || id === VID);
}

function pixelIds(px: Float32Array | null): number[] {
  if (!px) return [];
  const out: number[] = [];
  for (let i = 0; i < px.length; i += PER_TILE) out.push(px[i]);
  return out;
}

beforeEach(() => {
  calls.length = 0;
});

describe('buildPrompt', () => {
  test('single image: one placeholder becomes tokensPerTile x tiles ids, one BOS', async () => {
    const r = await buildPrompt(tok, template, info, media, { prompt: 'Describe the image.', images: [{ id: 7, tiles: 5 }] });
    expect(runs(r.inputIds)).toEqual([[IMG, 5 * TPT]]);
    expect(r.inputIds[0]).toBe(BOS);
    expect(Array.from(r.inputIds).filter((x) => x === BOS)).toHaveLength(1);
    expect(r.numTiles).toBe(5);
    expect(r.pixelValues?.length).toBe(5 * PER_TILE);
    expect(r.media).toEqual([{ kind: 'image', index: 0, tiles: 5, tokenStart: r.inputIds.indexOf(IMG), tokenCount: 20 }]);
    // The text after the run is the prompt, right after the placeholders.
    const after = Array.from(r.inputIds.slice(r.inputIds.lastIndexOf(IMG) + 1));
    expect(tok.decode(after)).toBe('Describe the image.assistant\n\n');
    // Same as expanding the transformers-rendered ids by hand.
    const unexpanded = tok.encode(r.text ?? '');
    expect(unexpanded.filter((x) => x === IMG)).toHaveLength(1);
    expect(r.inputIds.length).toBe(unexpanded.length - 1 + 20);
  });

  test('text only: no pixels', async () => {
    const r = await buildPrompt(tok, template, info, media, { messages: [{ role: 'user', content: 'Hi' }] });
    expect(r.pixelValues).toBeNull();
    expect(r.numTiles).toBe(0);
    expect(runs(r.inputIds)).toEqual([]);
  });

  test('order: images before videos in a message, pixels in placeholder order across messages', async () => {
    const r = await buildPrompt(tok, template, info, media, {
      messages: [
        { role: 'user', content: [{ type: 'text', text: 'First' }, { type: 'video' }, { type: 'image' }, { type: 'text', text: 'last' }] },
        { role: 'assistant', content: [{ type: 'text', text: 'ok' }] },
        { role: 'user', content: [{ type: 'image', image: { id: 3, tiles: 1 } }, { type: 'video', video: { id: 4, frames: 2 } }] },
      ],
      images: [{ id: 1, tiles: 2 }],
      videos: [{ id: 2, frames: 3 }],
    });
    expect(runs(r.inputIds)).toEqual([
      [IMG, 2 * TPT],
      [VID, 3 * TPT],
      [IMG, 1 * TPT],
      [VID, 2 * TPT],
    ]);
    expect(pixelIds(r.pixelValues)).toEqual([1, 1, 2, 2, 2, 3, 4, 4]);
    expect(r.numTiles).toBe(8);
    expect(r.media.map((m) => `${m.kind}${m.index}`)).toEqual(['image0', 'video0', 'image1', 'video1']);
  });

  test('options pass through: maxNumTiles, numFrames', async () => {
    const r = await buildPrompt(tok, template, info, media, {
      prompt: 'x',
      images: [{ id: 1, tiles: 10 }],
      videos: [{ id: 2, frames: 10 }],
      maxNumTiles: 2,
      numFrames: 4,
    });
    expect(calls).toEqual(['image1:2', 'video2:4']);
    expect(r.numTiles).toBe(3 + 4);
  });

  test('a template without BOS gets one BOS prepended', async () => {
    const noBos = new ChatTemplate("{% for m in messages %}{{ m['content'] }}{% endfor %}", {});
    const r = await buildPrompt(tok, noBos, info, media, { messages: [{ role: 'user', content: 'Hello' }] });
    expect(Array.from(r.inputIds)).toEqual([BOS, 9906]);
  });

  test('count mismatches are ERR_INVALID_ARGUMENT', async () => {
    await expect(
      buildPrompt(tok, template, info, media, {
        messages: [{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: 'x' }] }],
        images: [
          { id: 1, tiles: 1 },
          { id: 2, tiles: 1 },
        ],
      }),
    ).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(
      buildPrompt(tok, template, info, media, {
        messages: [{ role: 'user', content: [{ type: 'image' }, { type: 'image' }, { type: 'text', text: 'x' }] }],
        images: [{ id: 1, tiles: 1 }],
      }),
    ).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(
      buildPrompt(tok, template, info, media, { inputIds: [BOS, IMG, IMG, 5], images: [{ id: 1, tiles: 1 }] }),
    ).rejects.toBeInstanceOf(PlmError);
    await expect(buildPrompt(tok, template, info, media, { prompt: 'x', inputIds: [1] })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
    });
  });

  test('inputIds: one placeholder per image is expanded; already expanded runs are kept', async () => {
    const a = await buildPrompt(tok, template, info, media, { inputIds: [BOS, IMG, 5, VID, 6], images: [{ id: 1, tiles: 2 }], videos: [{ id: 2, frames: 1 }] });
    expect(a.inputIds.length).toBe(3 + 8 + 4);
    expect(runs(a.inputIds)).toEqual([
      [IMG, 8],
      [VID, 4],
    ]);
    const expanded = Array.from(a.inputIds);
    const b = await buildPrompt(tok, template, info, media, { inputIds: expanded, images: [{ id: 1, tiles: 2 }], videos: [{ id: 2, frames: 1 }] });
    expect(Array.from(b.inputIds)).toEqual(expanded);
    expect(pixelIds(b.pixelValues)).toEqual([1, 1, 2]);
  });

  test('context overflow names the token counts and suggests fewer tiles', async () => {
    const small = { ...info, maxContext: 200 };
    const p = buildPrompt(tok, template, small, media, { prompt: 'Describe.', images: [{ id: 1, tiles: 37 }], maxTokens: 50 });
    await expect(p).rejects.toMatchObject({ code: 'ERR_CONTEXT_OVERFLOW' });
    const err = (await p.catch((e: unknown) => e)) as PlmError;
    expect(err.message).toMatch(/maxNumTiles/);
    expect(err.message).toMatch(/148 of them are image\/video features/);
    expect(err.message).toMatch(/> the context limit of 200/);
    // Fits with fewer tiles.
    const ok = await buildPrompt(tok, template, small, media, { prompt: 'Describe.', images: [{ id: 1, tiles: 37 }], maxTokens: 50, maxNumTiles: 4 });
    expect(ok.numTiles).toBe(5);
    // Text alone over the limit fails before any media work.
    await expect(
      buildPrompt(tok, template, { ...info, maxContext: 10 }, media, { prompt: 'x', images: [{ id: 1, tiles: 1 }] }),
    ).rejects.toMatchObject({ code: 'ERR_CONTEXT_OVERFLOW' });
    expect(calls).toEqual(['image1:36', 'image1:4']);
  });

  test('media on a text-only model are rejected', async () => {
    await expect(
      buildPrompt(tok, template, { ...info, visionPresent: false }, media, { prompt: 'x', images: [{ id: 1, tiles: 1 }] }),
    ).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });

  test('an aborted signal rejects with ERR_CANCELLED', async () => {
    const ac = new AbortController();
    ac.abort();
    await expect(buildPrompt(tok, template, info, media, { prompt: 'x', signal: ac.signal })).rejects.toMatchObject({ code: 'ERR_CANCELLED' });
  });
});
