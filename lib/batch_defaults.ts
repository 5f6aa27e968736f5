/**
 * Defaults of the BullMQ batch path (lib/batch_queue.ts), in a file of their own so that the CLI can show them
 * in its help without importing bullmq.
 */

/** The queue name when none is given. */
export const DEFAULT_QUEUE_NAME = 'plm-batch';
/** Tries per item (first run included) before it stays in the failed set. */
export const DEFAULT_ATTEMPTS = 3;
/** First retry delay; it doubles with every retry. */
export const DEFAULT_BACKOFF_MS = 2000;
/** BullMQ's default job lock: a killed worker's jobs are taken up again 30-60 s after it died. */
export const DEFAULT_LOCK_DURATION_MS = 30_000;
/** BullMQ's default interval of the stalled-job check. */
export const DEFAULT_STALLED_INTERVAL_MS = 30_000;
/** How often a job may be recovered from a dead worker before it fails (BullMQ's default is 1). */
export const DEFAULT_MAX_STALLED = 2;
