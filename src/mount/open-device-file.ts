import { constants, type FileHandle, open } from 'node:fs/promises';

/** The part of a path mount that a file frontend needs. */
export interface OpenablePathMount {
  open(): Promise<string>;
  close(): Promise<void>;
}

/**
 * Opens a path mount's device as a file (read-only or read-write, optionally O_DIRECT). If the
 * device cannot be opened, the mount is closed again and the open error is the one thrown; a failure
 * of that close goes to `onCloseError`.
 */
export async function openDeviceFile(
  mount: OpenablePathMount,
  readOnly: boolean,
  oDirect: boolean,
  onCloseError: (err: unknown) => void,
): Promise<FileHandle> {
  const path = await mount.open();
  const flags = (readOnly ? constants.O_RDONLY : constants.O_RDWR) | (oDirect ? constants.O_DIRECT : 0);
  try {
    return await open(path, flags);
  } catch (err) {
    await mount.close().catch(onCloseError);
    throw err;
  }
}
