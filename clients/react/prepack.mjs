// `npm pack` and `npm publish` run this first: the package carries the daemon's own browser
// client and its declarations (notifyd/static/), copied, so that there is one source of them.
import { copyFileSync } from "node:fs";

for (const name of ["notifyd.js", "notifyd.d.ts"]) {
  copyFileSync(new URL(`../../notifyd/static/${name}`, import.meta.url), new URL(name, import.meta.url));
}
