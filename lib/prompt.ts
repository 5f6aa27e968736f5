/**
 * Builds the model input (token ids + pixel values) from chat messages, a prompt string or raw ids,
 * plus images and videos: renders the chat template, tokenizes, preprocesses the media in order of
 * appearance and expands each placeholder into its run of feature slots (as transformers' PerceptionLMProcessor._expand_media_tokens does).
 *
 * Independent of the native addon: media preprocessing is injected ({@link MediaProcessors}).
 */
import { PlmError } from './errors';
import type { ChatMessage, ChatTemplate, MessageContent } from './chat_template';
import type { PlmTokenizer } from './tokenizer';

/** The model facts prompt building needs. */
export interface PromptModelInfo {
  /** `<|image|>` id (128002). */
  imageTokenId: number;
  /** `<|video|>` id (128003). */
  videoTokenId: number;
  /** Feature tokens per 448x448 tile or video frame (256 for PLM). */
  tokensPerTile: number;
  /** Maximum sequence length (prompt + generated tokens): min(max_position_embeddings, maxContext). */
  maxContext: number;
  /** BOS id, prepended when the rendered template does not start with the BOS token. */
  bosTokenId?: number;
  /** False for checkpoints without a vision tower: media are then rejected. */
  visionPresent: boolean;
  /** Default tile size in pixels (vision image_size, 448). */
  tileSize: number;
  /** Default maximum tiles per image, thumbnail not included (36 for PLM). */
  maxNumTiles: number;
  /** Default number of video frames (32, as in the HF processor examples). */
  numFrames: number;
}

/** A preprocessed image: `pixelValues` is [numTiles, 3, S, S] (thumbnail first). */
export interface ProcessedImage {
  pixelValues: Float32Array;
  numTiles: number;
}

/** Preprocessed video frames: `pixelValues` is [numFrames, 3, S, S]. */
export interface ProcessedVideo {
  pixelValues: Float32Array;
  numFrames: number;
}

/** Image and video preprocessing, injected so prompt building can be tested without native code. */
export interface MediaProcessors<I, V> {
  image(input: I, opts: { tileSize: number; maxNumTiles: number }): Promise<ProcessedImage>;
  video(input: V, opts: { numFrames: number; size: number }): Promise<ProcessedVideo>;
}

/** What to build the input from: exactly one of `messages`, `prompt`, `inputIds`. */
export interface PromptInput<I, V> {
  /** Chat messages (transformers format). Media parts without a payload take `images`/`videos` in order. */
  messages?: ReadonlyArray<ChatMessage<I, V>>;
  /** A single user turn; `images` and `videos` are attached to it (images, then videos, then text). */
  prompt?: string;
  /**
   * Token ids of a rendered prompt. Each `<|image|>` / `<|video|>` id is one placeholder that gets
   * expanded; ids that are already expanded (placeholder count == feature tokens) are kept as is.
   */
  inputIds?: ArrayLike<number>;
  images?: readonly I[];
  videos?: readonly V[];
  /** System prompt used with `prompt` (default: the template's, i.e. PLM's default system prompt). */
  system?: string;
  /** Tokens reserved for generation in the context check. Default 0. */
  maxTokens?: number;
  /** Maximum tiles per image (default {@link PromptModelInfo.maxNumTiles}). */
  maxNumTiles?: number;
  /** Tile size in pixels (default {@link PromptModelInfo.tileSize}). */
  tileSize?: number;
  /** Frames sampled per video (default {@link PromptModelInfo.numFrames}). */
  numFrames?: number;
  /** Aborts between media items. */
  signal?: AbortSignal;
}

/** One media item as placed in the prompt. */
export interface PlacedMedia {
  kind: 'image' | 'video';
  /** Index among the items of its kind, in order of appearance. */
  index: number;
  /** Tiles (images, thumbnail included) or frames (videos). */
  tiles: number;
  /** Position of the first feature token in `inputIds`. */
  tokenStart: number;
  /** tiles x tokensPerTile. */
  tokenCount: number;
}

/** The model input. */
export interface BuiltPrompt {
  /** [T] token ids with every placeholder expanded. */
  inputIds: Int32Array;
  /** [numTiles, 3, S, S] pixels of all media in placeholder order, or null without media. */
  pixelValues: Float32Array | null;
  /** Total tiles + frames in `pixelValues`. */
  numTiles: number;
  /** Media in placeholder order. */
  media: PlacedMedia[];
  /** The pixels of each media item, in placeholder order ([tiles, 3, S, S] each). */
  mediaPixels: { pixels: Float32Array; tiles: number }[];
  /** The rendered template text (undefined when built from `inputIds`). */
  text?: string;
}

function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new PlmError('ERR_CANCELLED', 'the operation was aborted (AbortSignal)');
}

function positiveInt(name: string, v: number | undefined, def: number): number {
  const x = v ?? def;
  if (!Number.isInteger(x) || x < 1) throw new PlmError('ERR_INVALID_ARGUMENT', `${name} must be a positive integer, got ${String(x)}`);
  return x;
}

/**
 * Returns the messages to render and the media in per-kind order of appearance. Media parts that
 * carry no payload take the next item of `images` / `videos`.
 */
export function collectMedia<I, V>(
  input: PromptInput<I, V>,
): { messages: ChatMessage<I, V>[]; images: I[]; videos: V[] } {
  const extraImages = [...(input.images ?? [])];
  const extraVideos = [...(input.videos ?? [])];
  if (input.prompt !== undefined) {
    if (typeof input.prompt !== 'string') throw new PlmError('ERR_INVALID_ARGUMENT', 'prompt must be a string');
    const content: MessageContent<I, V>[] = [
      ...extraImages.map((image) => ({ type: 'image' as const, image })),
      ...extraVideos.map((video) => ({ type: 'video' as const, video })),
      { type: 'text', text: input.prompt },
    ];
    const messages: ChatMessage<I, V>[] = [];
    if (input.system !== undefined) messages.push({ role: 'system', content: input.system });
    messages.push({ role: 'user', content });
    return { messages, images: extraImages, videos: extraVideos };
  }
  const msgs = input.messages;
  if (!Array.isArray(msgs) || msgs.length === 0) {
    throw new PlmError('ERR_INVALID_ARGUMENT', 'messages must be a non-empty array of {role, content}');
  }
  const images: I[] = [];
  const videos: V[] = [];
  let nextImage = 0;
  let nextVideo = 0;
  for (const [i, m] of msgs.entries()) {
    if (!m || typeof m !== 'object') throw new PlmError('ERR_INVALID_ARGUMENT', `messages[${i}] must be an object`);
    if (!Array.isArray(m.content)) continue;
    // The template writes a message's images first, then its videos; per-kind order is what matters.
    for (const part of m.content) {
      if (part && part.type === 'image') {
        if (part.image !== undefined) images.push(part.image);
        else {
          if (nextImage >= extraImages.length) {
            throw new PlmError(
              'ERR_INVALID_ARGUMENT',
              `messages[${i}] has an image part without "image" and options.images has only ${extraImages.length} item(s)`,
            );
          }
          images.push(extraImages[nextImage++]);
        }
      } else if (part && part.type === 'video') {
        if (part.video !== undefined) videos.push(part.video);
        else {
          if (nextVideo >= extraVideos.length) {
            throw new PlmError(
              'ERR_INVALID_ARGUMENT',
              `messages[${i}] has a video part without "video" and options.videos has only ${extraVideos.length} item(s)`,
            );
          }
          videos.push(extraVideos[nextVideo++]);
        }
      }
    }
  }
  if (nextImage !== extraImages.length) {
    throw new PlmError(
      'ERR_INVALID_ARGUMENT',
      `options.images has ${extraImages.length} item(s) but the messages have only ${nextImage} image part(s) without an "image"; ` +
        `add { type: 'image' } parts to the messages`,
    );
  }
  if (nextVideo !== extraVideos.length) {
    throw new PlmError(
      'ERR_INVALID_ARGUMENT',
      `options.videos has ${extraVideos.length} item(s) but the messages have only ${nextVideo} video part(s) without a "video"; ` +
        `add { type: 'video' } parts to the messages`,
    );
  }
  return { messages: [...msgs], images, videos };
}

/**
 * Renders (unless `inputIds`) and tokenizes, without touching media. Exactly one BOS: the rendered
 * text is tokenized with no added special tokens; BOS is prepended only when the text does not
 * already start with the BOS token (as transformers' `apply_chat_template(tokenize=True)`).
 */
export function tokenizePrompt<I, V>(
  tokenizer: PlmTokenizer,
  template: ChatTemplate,
  info: PromptModelInfo,
  input: PromptInput<I, V>,
): { ids: number[]; text?: string; images: I[]; videos: V[] } {
  const given = [input.messages !== undefined, input.prompt !== undefined, input.inputIds !== undefined].filter(Boolean).length;
  if (given !== 1) {
    throw new PlmError('ERR_INVALID_ARGUMENT', 'give exactly one of messages, prompt or inputIds');
  }
  if (input.inputIds !== undefined) {
    const ids = Array.from(input.inputIds);
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0) throw new PlmError('ERR_INVALID_ARGUMENT', `inputIds must hold non-negative integers, got ${id}`);
    }
    if (ids.length === 0) throw new PlmError('ERR_INVALID_ARGUMENT', 'inputIds is empty');
    return { ids, images: [...(input.images ?? [])], videos: [...(input.videos ?? [])] };
  }
  const { messages, images, videos } = collectMedia(input);
  let text = template.render(messages, { addGenerationPrompt: true });
  // Checkpoints whose vocabulary names the placeholders differently (e.g. <|reserved_special_token_0|>).
  for (const [literal, id] of [
    ['<|image|>', info.imageTokenId],
    ['<|video|>', info.videoTokenId],
  ] as const) {
    if (tokenizer.tokenToId(literal) !== id) {
      const name = tokenizer.idToToken(id);
      if (name !== undefined && text.includes(literal)) text = text.split(literal).join(name);
    }
  }
  const ids = tokenizer.encode(text);
  const bosToken = tokenizer.bosToken;
  const bosId = info.bosTokenId ?? tokenizer.special.bos;
  const startsWithBos = bosToken !== undefined ? text.startsWith(bosToken) : bosId !== undefined && ids[0] === bosId;
  if (!startsWithBos && bosId !== undefined) ids.unshift(bosId);
  return { ids, text, images, videos };
}

function overflowError(total: number, promptTokens: number, maxTokens: number, limit: number, mediaTokens: number, tiles: number, maxNumTiles: number): PlmError {
  let hint = 'Use a shorter prompt or a smaller maxTokens';
  if (mediaTokens > 0) {
    const perTile = tiles > 0 ? mediaTokens / tiles : 0;
    const over = total - limit;
    const fewerTiles = perTile > 0 ? Math.ceil(over / perTile) : 0;
    const suggest = Math.max(1, maxNumTiles - fewerTiles);
    hint =
      `${mediaTokens} of them are image/video features (${tiles} tiles or frames of ${perTile} tokens). ` +
      `Use fewer tiles (e.g. maxNumTiles: ${suggest}, --max-tiles ${suggest}), fewer video frames (numFrames), ` +
      `fewer images, a shorter prompt or a smaller maxTokens`;
  }
  return new PlmError(
    'ERR_CONTEXT_OVERFLOW',
    `the prompt is ${promptTokens} tokens and maxTokens is ${maxTokens}: ${total} > the context limit of ${limit} tokens. ${hint}.`,
  );
}

/**
 * Builds the model input.
 *
 * - Renders the chat template (messages / prompt), tokenizes with exactly one BOS.
 * - Preprocesses images (`media.image`, tiles incl. thumbnail) and videos (`media.video`, frames) in
 *   order of appearance, one at a time.
 * - Expands the k-th `<|image|>` id into `tokensPerTile x tiles_k` image ids and the k-th `<|video|>`
 *   into `tokensPerTile x frames_k` video ids; concatenates pixel values in placeholder order.
 *
 * Throws `PlmError('ERR_INVALID_ARGUMENT')` when the placeholders and the media do not match in
 * number, and `ERR_CONTEXT_OVERFLOW` when prompt + maxTokens exceeds `info.maxContext`.
 *
 * @example
 * ```ts
 * const built = await buildPrompt(tok, template, info, media, {
 *   prompt: 'Describe the image.', images: ['cat.jpg'], maxTokens: 256, maxNumTiles: 4,
 * });
 * built.inputIds.length; // 5 tiles * 256 + 60 text tokens
 * ```
 */
export async function buildPrompt<I, V>(
  tokenizer: PlmTokenizer,
  template: ChatTemplate,
  info: PromptModelInfo,
  media: MediaProcessors<I, V>,
  input: PromptInput<I, V>,
): Promise<BuiltPrompt> {
  checkAborted(input.signal);
  const maxTokens = input.maxTokens ?? 0;
  if (!Number.isInteger(maxTokens) || maxTokens < 0) {
    throw new PlmError('ERR_INVALID_ARGUMENT', `maxTokens must be a non-negative integer, got ${String(maxTokens)}`);
  }
  const tileSize = positiveInt('tileSize', input.tileSize, info.tileSize);
  const maxNumTiles = positiveInt('maxNumTiles', input.maxNumTiles, info.maxNumTiles);
  const numFrames = positiveInt('numFrames', input.numFrames, info.numFrames);

  const { ids, text, images, videos } = tokenizePrompt(tokenizer, template, info, input);
  const nImagePh = ids.reduce((n, id) => n + (id === info.imageTokenId ? 1 : 0), 0);
  const nVideoPh = ids.reduce((n, id) => n + (id === info.videoTokenId ? 1 : 0), 0);

  if ((images.length > 0 || videos.length > 0) && !info.visionPresent) {
    throw new PlmError('ERR_INVALID_ARGUMENT', 'this checkpoint has no vision tower: it accepts text only (remove images and videos)');
  }
  const fromIds = input.inputIds !== undefined;
  if (!fromIds || nImagePh === images.length) {
    if (nImagePh !== images.length) {
      throw new PlmError('ERR_INVALID_ARGUMENT', `the prompt has ${nImagePh} <|image|> placeholder(s) but ${images.length} image(s) were given`);
    }
  }
  if (!fromIds || nVideoPh === videos.length) {
    if (nVideoPh !== videos.length) {
      throw new PlmError('ERR_INVALID_ARGUMENT', `the prompt has ${nVideoPh} <|video|> placeholder(s) but ${videos.length} video(s) were given`);
    }
  }
  // Early check on the text alone (media only add tokens).
  const textTokens = ids.length - nImagePh - nVideoPh;
  if (textTokens + maxTokens > info.maxContext) {
    throw overflowError(textTokens + maxTokens, textTokens, maxTokens, info.maxContext, 0, 0, maxNumTiles);
  }

  const processedImages: ProcessedImage[] = [];
  for (const img of images) {
    checkAborted(input.signal);
    const p = await media.image(img, { tileSize, maxNumTiles });
    if (!Number.isInteger(p.numTiles) || p.numTiles < 1 || p.pixelValues.length !== p.numTiles * 3 * tileSize * tileSize) {
      throw new PlmError('ERR_INTERNAL', `image preprocessing returned ${p.pixelValues.length} values for ${p.numTiles} tiles of ${tileSize}px`);
    }
    processedImages.push(p);
  }
  const processedVideos: ProcessedVideo[] = [];
  for (const vid of videos) {
    checkAborted(input.signal);
    const p = await media.video(vid, { numFrames, size: tileSize });
    if (!Number.isInteger(p.numFrames) || p.numFrames < 1 || p.pixelValues.length !== p.numFrames * 3 * tileSize * tileSize) {
      throw new PlmError('ERR_INTERNAL', `video preprocessing returned ${p.pixelValues.length} values for ${p.numFrames} frames of ${tileSize}px`);
    }
    processedVideos.push(p);
  }
  checkAborted(input.signal);

  const tpt = info.tokensPerTile;
  const imageTiles = processedImages.reduce((n, p) => n + p.numTiles, 0);
  const videoFrames = processedVideos.reduce((n, p) => n + p.numFrames, 0);
  const expectedImageTokens = imageTiles * tpt;
  const expectedVideoTokens = videoFrames * tpt;
  // Raw ids that already carry expanded runs are kept unchanged.
  const expandImages = !(fromIds && nImagePh !== images.length);
  const expandVideos = !(fromIds && nVideoPh !== videos.length);
  if (!expandImages && nImagePh !== expectedImageTokens) {
    throw new PlmError(
      'ERR_INVALID_ARGUMENT',
      `inputIds has ${nImagePh} <|image|> ids: neither one per image (${images.length}) nor the expanded count (${expectedImageTokens} = ${imageTiles} tiles x ${tpt})`,
    );
  }
  if (!expandVideos && nVideoPh !== expectedVideoTokens) {
    throw new PlmError(
      'ERR_INVALID_ARGUMENT',
      `inputIds has ${nVideoPh} <|video|> ids: neither one per video (${videos.length}) nor the expanded count (${expectedVideoTokens} = ${videoFrames} frames x ${tpt})`,
    );
  }

  const total =
    ids.length -
    (expandImages ? nImagePh : 0) -
    (expandVideos ? nVideoPh : 0) +
    (expandImages ? expectedImageTokens : 0) +
    (expandVideos ? expectedVideoTokens : 0);
  const mediaTokens = expectedImageTokens + expectedVideoTokens;
  if (total + maxTokens > info.maxContext) {
    throw overflowError(total + maxTokens, total, maxTokens, info.maxContext, mediaTokens, imageTiles + videoFrames, maxNumTiles);
  }

  const out = new Int32Array(total);
  const placed: PlacedMedia[] = [];
  const pixelParts: Float32Array[] = [];
  const mediaPixels: { pixels: Float32Array; tiles: number }[] = [];
  let o = 0;
  // One cursor per media kind: which item comes next and, for already-expanded runs, how much of the
  // current run is left.
  const cursors = [
    { kind: 'image' as const, tokenId: info.imageTokenId, expand: expandImages, next: 0, left: 0,
      items: processedImages.map((p) => ({ tiles: p.numTiles, pixelValues: p.pixelValues })) },
    { kind: 'video' as const, tokenId: info.videoTokenId, expand: expandVideos, next: 0, left: 0,
      items: processedVideos.map((p) => ({ tiles: p.numFrames, pixelValues: p.pixelValues })) },
  ];
  for (let k = 0; k < ids.length; k++) {
    const id = ids[k];
    const c = cursors.find((cur) => cur.tokenId === id);
    if (!c) {
      out[o++] = id;
      continue;
    }
    if (c.expand || c.left === 0) {
      const item = c.items[c.next];
      const n = item.tiles * tpt;
      placed.push({ kind: c.kind, index: c.next, tiles: item.tiles, tokenStart: o, tokenCount: n });
      pixelParts.push(item.pixelValues);
      mediaPixels.push({ pixels: item.pixelValues, tiles: item.tiles });
      c.next++;
      if (c.expand) {
        out.fill(id, o, o + n);
        o += n;
        continue;
      }
      c.left = n;
    }
    c.left--;
    out[o++] = id;
  }

  let pixelValues: Float32Array | null = null;
  if (pixelParts.length === 1) pixelValues = pixelParts[0];
  else if (pixelParts.length > 1) {
    pixelValues = new Float32Array(pixelParts.reduce((n, p) => n + p.length, 0));
    let off = 0;
    for (const p of pixelParts) {
      pixelValues.set(p, off);
      off += p.length;
    }
  }
  return { inputIds: out, pixelValues, numTiles: imageTiles + videoFrames, media: placed, mediaPixels, text };
}
