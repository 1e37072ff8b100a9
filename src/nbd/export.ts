/** One export the NBD server offers: shared by the handshake (which negotiates it) and the server. */
import type { Backend } from '../pipeline/types.js';

export interface NbdExport {
  readonly name: string;
  readonly description?: string;
  readonly backend: Backend;
  readonly readOnly?: boolean;
}
