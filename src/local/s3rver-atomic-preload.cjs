'use strict';
/**
 * Preloaded into the s3rver process (`--require`): makes its PutObject atomic, as S3's is.
 *
 * s3rver 3.7.1 streams a PUT body straight into the object's file, truncating what was there, and answers
 * before the file is flushed. So a reader can see half an object, and a client killed mid-upload leaves a
 * truncated object (or, for our manifests, unparseable JSON) behind for good, which real S3 never does:
 * an interrupted PUT stores nothing, and a GET sees the old object or the new one. The crash tests kill
 * workers mid-upload, and the local stack runs users' pipelines, so the emulator must not invent failures
 * S3 cannot have. Here the body goes to a staging file outside the bucket tree and is renamed into place
 * only when the whole body arrived (a rename on one filesystem is atomic); an aborted body is discarded.
 */
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { Transform } = require('node:stream');
const { pipeline } = require('node:stream/promises');

const FilesystemStore = require(require.resolve('s3rver/lib/stores/filesystem.js'));
if (
  typeof FilesystemStore !== 'function' ||
  typeof FilesystemStore.prototype.putObject !== 'function' ||
  typeof FilesystemStore.prototype.getResourcePath !== 'function' ||
  typeof FilesystemStore.prototype.putMetadata !== 'function'
) {
  // A different s3rver layout: fail loudly rather than run with non-atomic writes.
  throw new Error('s3rver-atomic-preload: s3rver FilesystemStore layout changed; update this preload');
}

FilesystemStore.prototype.putObject = async function putObject(object) {
  const objectPath = this.getResourcePath(object.bucket, object.key, 'object');
  // Beside the data directory, not in it: a directory in it would be listed as a bucket, a file in a
  // bucket's tree could be listed as an object.
  const staging = `${path.resolve(this.rootDirectory)}.staging`;
  await fs.promises.mkdir(path.dirname(objectPath), { recursive: true });
  await fs.promises.mkdir(staging, { recursive: true });
  const tmp = path.join(staging, `${process.pid}-${crypto.randomUUID()}`);
  const md5 = crypto.createHash('md5');
  let size = 0;
  try {
    if (Buffer.isBuffer(object.content)) {
      await fs.promises.writeFile(tmp, object.content);
      md5.update(object.content);
      size = object.content.length;
    } else {
      // pipeline rejects when the request is aborted (a client killed mid-body), unlike s3rver's .pipe().
      await pipeline(
        object.content,
        new Transform({
          transform(chunk, _encoding, callback) {
            md5.update(chunk);
            size += chunk.length;
            callback(null, chunk);
          },
        }),
        fs.createWriteStream(tmp),
      );
    }
    const digest = md5.digest('hex');
    await fs.promises.rename(tmp, objectPath);
    await this.putMetadata(object.bucket, object.key, object.metadata, digest);
    return { size, md5: digest };
  } catch (err) {
    await fs.promises.rm(tmp, { force: true });
    throw err;
  }
};
