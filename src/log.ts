import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export interface LogOptions {
  /** pino level; R3MAP_LOG_LEVEL overrides the default of 'info'. */
  readonly level?: LevelWithSilent;
}

/**
 * The root logger: JSON lines on stderr (fd 2). stdout is reserved for results
 * (the device path, bench tables, JSON). Components take `log.child({ component })`.
 */
export function createLogger(options: LogOptions = {}): Logger {
  const level = options.level ?? (process.env.R3MAP_LOG_LEVEL as LevelWithSilent | undefined) ?? 'info';
  return pino({ level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
}

/** A logger that drops everything, the default for library users who pass none. */
export const silentLogger: Logger = pino({ level: 'silent' });
