// Turns jco 1.9.1's guest-types output into declarations tsc accepts: the
// world's types become the ambient module `wsroom:room/types@0.3.0` (as
// the host interface is `wsroom:room/host@0.3.0`), which both import.
//   node fix-types.mjs IN_DIR OUT_DIR
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const [input, output] = process.argv.slice(2);
mkdirSync(join(output, "interfaces"), { recursive: true });
const read = (name) => readFileSync(join(input, name), "utf8");

const typesFile = read("interfaces/wsroom-room-types.d.ts");
const typesModule = typesFile.match(/^declare module '([^']+)' \{\n\}\n/m);
if (!typesModule) throw new Error("unexpected jco output for the types interface");
const typesName = typesModule[1];
writeFileSync(
  join(output, "interfaces/wsroom-room-types.d.ts"),
  `declare module '${typesName}' {\n${typesFile.replace(typesModule[0], "").trimEnd()}\n}\n`,
);

const hostFile = read("interfaces/wsroom-room-host.d.ts");
const imports = [...hostFile.matchAll(/^import type \{ (\w+) \} from '\.\/wsroom-room-types\.js';$/gm)].map(
  (m) => m[1],
);
const hostBody = hostFile
  .replace(/^import type .*\n/gm, "")
  .replace(/^export \{ \w+ \};\n/gm, "")
  .replace(/^(declare module '[^']+' \{\n)/, `$1  import type { ${imports.join(", ")} } from '${typesName}';\n`);
writeFileSync(join(output, "interfaces/wsroom-room-host.d.ts"), hostBody);

const worldFile = read("room.d.ts")
  .replace(/^import \{ WsroomRoomHost \} .*\n/m, "")
  .replace(/^declare const WsroomRoomTypes: \{\};\n/m, "")
  .replaceAll("'./interfaces/wsroom-room-types.js'", `'${typesName}'`);
writeFileSync(join(output, "room.d.ts"), worldFile);
