/**
 * Progress for the CLI's long steps (model load, image and video encoding, prefill): a cli-progress bar
 * on stderr when it is a TTY, one plain line per stage otherwise, nothing when disabled.
 */
import type { SingleBar } from 'cli-progress';

export interface ProgressReporter {
  /** fraction in 0..1 of the current stage. */
  update(stage: string, fraction: number): void;
  stop(): void;
}

export function createProgress(enabled: boolean, stream: NodeJS.WriteStream = process.stderr): ProgressReporter {
  if (!enabled) return { update: () => undefined, stop: () => undefined };
  if (!stream.isTTY) {
    let lastStage = '';
    return {
      update(stage) {
        if (stage !== lastStage) stream.write(`plm: ${stage}...\n`);
        lastStage = stage;
      },
      stop: () => undefined,
    };
  }
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { SingleBar: Bar, Presets } = require('cli-progress') as typeof import('cli-progress');
  let bar: SingleBar | undefined;
  return {
    update(stage, fraction) {
      if (!bar) {
        bar = new Bar({ stream, format: '{stage} [{bar}] {percentage}%', hideCursor: true, clearOnComplete: true }, Presets.shades_classic);
        bar.start(100, 0, { stage });
      }
      bar.update(Math.round(Math.min(1, Math.max(0, fraction)) * 100), { stage });
    },
    stop() {
      bar?.stop();
      bar = undefined;
    },
  };
}
