/**
 * Regenerates proto/tsvmm.json, the parsed form of proto/tsvmm.proto that
 * components load at start with protobufjs/light (no .proto parser to load
 * and run: a cold vmm restart is on the guest's critical path).
 *
 *   npm run proto        (test/proto.test.ts fails while the two differ)
 */
import * as fs from 'fs';
import * as path from 'path';
import * as protobuf from 'protobufjs';

export const PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');

/** The JSON form of proto/tsvmm.proto, as it should be committed. */
export function schemaJson(): string {
  return JSON.stringify(protobuf.loadSync(path.join(PROTO_DIR, 'tsvmm.proto')).toJSON(), null, 1) + '\n';
}

if (require.main === module) {
  fs.writeFileSync(path.join(PROTO_DIR, 'tsvmm.json'), schemaJson());
  process.stdout.write('wrote proto/tsvmm.json\n');
}
