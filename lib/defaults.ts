/**
 * Defaults shared by the API, the CLI and the server, defined once here so that `plm describe`, `plm serve`,
 * `model.complete()` and `batch()` cannot drift apart. Imports nothing (the CLI shows them in its help).
 */

/**
 * New tokens per answer when a call gives no `maxTokens` (`--max-tokens`, the server's `max_tokens`).
 * 256 holds a full PLM caption; the KV cache admits a request once its prompt plus this many positions fit,
 * so a larger default would admit fewer requests at once for no gain on typical answers.
 */
export const DEFAULT_MAX_TOKENS = 256;

/** Largest `max_tokens` a server request may ask for (`plm serve --max-tokens-limit`). */
export const DEFAULT_MAX_TOKENS_LIMIT = 4096;

/** Frames sampled per video (`numFrames`, `--frames`). */
export const DEFAULT_NUM_FRAMES = 32;

/** Tiles per image when the checkpoint's preprocessor_config.json does not say (`maxNumTiles`, `--max-tiles`). */
export const DEFAULT_MAX_NUM_TILES = 36;

/** Compute backend (`backend`, `--backend`): CUDA when usable, else the CPU. */
export const DEFAULT_BACKEND = 'auto' as const;

/** CPU threads (`threads`, `--threads`); 0 = the number of physical cores. */
export const DEFAULT_THREADS = 0;

/** CPU activation precision (`precision`, `--precision`): bf16 where the CPU has bf16 kernels, else f32. */
export const DEFAULT_PRECISION = 'auto' as const;

/** KV-cache capacity in tokens (`maxContext`, `--max-context`); 0 = the model's max_position_embeddings. */
export const DEFAULT_MAX_CONTEXT = 0;

/** Choices of `--backend`, `--precision` and `--quantize`. */
export const BACKENDS = ['auto', 'cpu', 'cuda'] as const;
export const PRECISIONS = ['auto', 'f32', 'bf16'] as const;
export const QUANTIZE_KINDS = ['none', 'int8', 'q4'] as const;
