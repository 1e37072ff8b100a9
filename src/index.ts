// The public surface of the r3map library: an explicit export list.
export * from './errors.js';
export type { ReaderAt, WriterAt, ReadWriterAt, Backend, BackendCapabilities } from './pipeline/types.js';
export { createLogger, silentLogger } from './log.js';
export { parseSize, parseDurationMs, formatSize } from './util/size.js';
export { parseBackendUri, type BackendSpec } from './backends/uri.js';
export { openBackend, type OpenBackendOptions } from './backends/open.js';
