import type { CatalogPointer, IcebergCatalog } from '../../src/sinks/s3-parquet/iceberg/table.js';

/** An Iceberg catalog in memory; `loseNext` makes the next swaps fail as if another writer had moved the pointer. */
export function memoryCatalog() {
  const state = { pointer: undefined as CatalogPointer | undefined, loseNext: 0, swaps: 0 };
  const catalog: IcebergCatalog = {
    load: async () => state.pointer,
    create: async (metadataLocation) => {
      if (state.pointer) return false;
      state.pointer = { metadataLocation, version: '1' };
      return true;
    },
    swap: async (expected, next) => {
      if (state.loseNext > 0) {
        state.loseNext -= 1;
        return false;
      }
      if (state.pointer?.metadataLocation !== expected.metadataLocation) return false;
      state.swaps += 1;
      state.pointer = { metadataLocation: next, version: String(Number(state.pointer.version) + 1) };
      return true;
    },
  };
  return { catalog, state };
}
