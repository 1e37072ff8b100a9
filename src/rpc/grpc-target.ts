/** Where a gRPC client connects and with which TLS material (shared by the HTTP/2 client and the gRPC backend). */
export type GrpcTarget = { readonly host: string; readonly port: number } | { readonly path: string };

export interface GrpcClientTls {
  /** PEM CA bundle that signed the server's certificate; default the system's roots. */
  readonly ca?: Buffer;
  /** PEM client certificate and key, for mutual TLS (both or neither). */
  readonly cert?: Buffer;
  readonly key?: Buffer;
}
