// The public surface of the r3map library: an explicit export list. Network backends (Redis, S3,
// Cassandra, gRPC, NBD) are reached through openBackend(uri), which loads their drivers on demand.
export * from './errors.js';
export type { ReaderAt, WriterAt, ReadWriterAt, Backend, BackendCapabilities } from './pipeline/types.js';
export { createLogger, silentLogger } from './log.js';
export { parseSize, parseDurationMs, formatSize } from './util/size.js';

// Pipeline stages
export { ArbitraryReadWriterAt } from './pipeline/arbitrary.js';
export { ChunkedReadWriterAt } from './pipeline/chunked.js';
export { ChunkTable, RemoteSync, PullState } from './pipeline/chunk-table.js';
export { ChunkState } from './pipeline/chunk-state.js';
export { SyncedReadWriterAt } from './pipeline/synced.js';
export { WriteMarks, type WriteGate } from './pipeline/write-marks.js';
export { RemoteStage } from './pipeline/remote-stage.js';
export { TrackingReadWriterAt } from './pipeline/tracking.js';
export { LockableReadWriterAt } from './pipeline/lockable.js';
export { LatencyReadWriterAt, LatencyBackend } from './pipeline/latency.js';
export { Puller } from './pipeline/puller.js';
export { Pusher } from './pipeline/pusher.js';
export { ascending, descending, firstAndLast, pullPriorityByName, type PullPriority } from './pipeline/pull-priority.js';

// Backends
export { parseBackendUri, redactUri, ACCEPTED_BACKEND_URIS, type BackendSpec } from './backends/uri.js';
export { openBackend, type OpenBackendOptions } from './backends/open.js';
export { MemoryBackend } from './backends/memory.js';
export { FileBackend } from './backends/file.js';
export { DirectoryBackend } from './backends/directory.js';
export { ChunkStoreBackend, type ChunkStore } from './backends/chunk-store.js';
export { openComposed, composeBackend, ComposedBackend } from './mount/compose.js';

// NBD
export { NbdServer, type NbdExport, type NbdServerOptions } from './nbd/server.js';
export { NbdClient } from './nbd-client/client.js';
export { parseListenAddress, formatListenAddress, type ListenAddress } from './nbd/listen-address.js';

// Kernel devices, mounts and memory regions
export { attachNbdDevice, disconnectNbdDevice, listNbdDevices } from './kernel/nbd-device.js';
export { DirectPathMount } from './mount/direct-path.js';
export { DirectFileMount } from './mount/direct-file.js';
export { DirectSliceMount } from './mount/direct-slice.js';
export { ManagedPathMount } from './mount/managed-path.js';
export { ManagedFileMount } from './mount/managed-file.js';
export { mapReader, UffdMap } from './uffd/map.js';

// gRPC
export { GrpcServer, type GrpcServerOptions } from './rpc/grpc-server.js';
export { BearerToken } from './rpc/bearer-token.js';

// Migration (the library roles; the r3map-seed and r3map-leech commands are still to come)
export { Seeder, type SeederOptions } from './migration/seeder.js';
export { SeederRemote } from './migration/seeder-remote.js';
export { Leecher, type LeecherOptions, type FinalizeResult } from './migration/leecher.js';
