/**
 * grpc-js service definitions for r3map's Backend and Seeder services, with r3map's method paths
 * (`/com.pojtinger.felicitas.r3map.mount.v1.Backend/ReadAt`, …) and our hand-written codec in
 * place of generated code. Both the server (addService) and the client (makeUnaryRequest) use
 * these objects, so a path or codec can only be wrong in one place.
 */
import type { MethodDefinition } from '@grpc/grpc-js';
import {
  decodeDirtyOffsetsReply,
  decodeEmpty,
  decodeReadAtArgs,
  decodeReadAtReply,
  decodeSizeReply,
  decodeWriteAtArgs,
  decodeWriteAtReply,
  decodeSinceArgs,
  decodeTrackReply,
  encodeDirtyOffsetsReply,
  encodeSinceArgs,
  encodeTrackReply,
  encodeEmpty,
  encodeReadAtArgs,
  encodeReadAtReply,
  encodeSizeReply,
  encodeWriteAtArgs,
  encodeWriteAtReply,
  type DirtyOffsetsReply,
  type Empty,
  type ReadAtArgs,
  type ReadAtReply,
  type SinceArgs,
  type SizeReply,
  type TrackReply,
  type WriteAtArgs,
  type WriteAtArgsParts,
  type WriteAtReply,
} from './codec.js';

export const BACKEND_SERVICE = 'com.pojtinger.felicitas.r3map.mount.v1.Backend';
export const SEEDER_SERVICE = 'com.pojtinger.felicitas.r3map.migration.v1.Seeder';

function unary<Req, Res>(
  service: string,
  name: string,
  requestSerialize: (value: Req) => Buffer,
  requestDeserialize: (bytes: Buffer) => Req,
  responseSerialize: (value: Res) => Buffer,
  responseDeserialize: (bytes: Buffer) => Res,
): MethodDefinition<Req, Res> {
  return Object.freeze({
    path: `/${service}/${name}`,
    requestStream: false,
    responseStream: false,
    requestSerialize,
    requestDeserialize,
    responseSerialize,
    responseDeserialize,
    originalName: name.charAt(0).toLowerCase() + name.slice(1),
  });
}

export interface BackendDefinition {
  readonly ReadAt: MethodDefinition<ReadAtArgs, ReadAtReply>;
  /** Requests may carry the payload in pieces (`parts`); the server always sees one `p`. */
  readonly WriteAt: MethodDefinition<WriteAtArgs | WriteAtArgsParts, WriteAtReply>;
  readonly Sync: MethodDefinition<Empty, Empty>;
  readonly Size: MethodDefinition<Empty, SizeReply>;
}

export interface SeederDefinition {
  readonly ReadAt: MethodDefinition<ReadAtArgs, ReadAtReply>;
  readonly Size: MethodDefinition<Empty, SizeReply>;
  readonly Track: MethodDefinition<Empty, TrackReply>;
  readonly Sync: MethodDefinition<SinceArgs, DirtyOffsetsReply>;
  readonly Dirty: MethodDefinition<SinceArgs, DirtyOffsetsReply>;
  /** The session without Track (its reply is a TrackReply on the wire: one int64 field 1). */
  readonly Session: MethodDefinition<Empty, TrackReply>;
  readonly Close: MethodDefinition<Empty, Empty>;
}

export const backendDefinition: BackendDefinition = Object.freeze({
  ReadAt: unary(BACKEND_SERVICE, 'ReadAt', encodeReadAtArgs, decodeReadAtArgs, encodeReadAtReply, decodeReadAtReply),
  WriteAt: unary<WriteAtArgs | WriteAtArgsParts, WriteAtReply>(BACKEND_SERVICE, 'WriteAt', encodeWriteAtArgs, decodeWriteAtArgs, encodeWriteAtReply, decodeWriteAtReply),
  Sync: unary(BACKEND_SERVICE, 'Sync', encodeEmpty, decodeEmpty, encodeEmpty, decodeEmpty),
  Size: unary(BACKEND_SERVICE, 'Size', encodeEmpty, decodeEmpty, encodeSizeReply, decodeSizeReply),
});

export const seederDefinition: SeederDefinition = Object.freeze({
  ReadAt: unary(SEEDER_SERVICE, 'ReadAt', encodeReadAtArgs, decodeReadAtArgs, encodeReadAtReply, decodeReadAtReply),
  Size: unary(SEEDER_SERVICE, 'Size', encodeEmpty, decodeEmpty, encodeSizeReply, decodeSizeReply),
  Track: unary(SEEDER_SERVICE, 'Track', encodeEmpty, decodeEmpty, encodeTrackReply, decodeTrackReply),
  Sync: unary(SEEDER_SERVICE, 'Sync', encodeSinceArgs, decodeSinceArgs, encodeDirtyOffsetsReply, decodeDirtyOffsetsReply),
  Dirty: unary(SEEDER_SERVICE, 'Dirty', encodeSinceArgs, decodeSinceArgs, encodeDirtyOffsetsReply, decodeDirtyOffsetsReply),
  Session: unary(SEEDER_SERVICE, 'Session', encodeEmpty, decodeEmpty, encodeTrackReply, decodeTrackReply),
  Close: unary(SEEDER_SERVICE, 'Close', encodeEmpty, decodeEmpty, encodeEmpty, decodeEmpty),
});
