/**
 * Finds and loads the compiled N-API addon (bindings/addon.cpp), in this order:
 *
 * 1. a local source build: `<package>/build/Release/perception_lm.node` (`npm run build:native`, or the
 *    install script's source-build fallback);
 * 2. the platform package: `@perception-lm/<os>-<cpu>[-<libc>]`, an optional dependency that npm installs
 *    only on the matching `os` / `cpu` / `libc` (see {@link PLATFORM_PACKAGES}); on linux-x64 it also holds
 *    `libplm_cuda.so`, which the addon finds beside itself (native/model/runner_cuda.cpp), so NVIDIA users
 *    get the GPU without a CUDA toolkit;
 * 3. `<package>/prebuilds/<platform>-<arch>/` through node-gyp-build (`npm run build:prebuilt` in a checkout,
 *    or a package vendored with its prebuilds).
 *
 * When none loads, the error says what was tried and why it failed, which platform packages exist and
 * how to build from source. Windows is reported as unsupported (`ERR_UNSUPPORTED_PLATFORM`): the native
 * core uses POSIX mmap and dlopen directly.
 *
 * The selection is split from the loading ({@link addonCandidates} takes the file system as arguments)
 * so that it can be tested for any platform.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PlmError } from './errors';

/** A package of prebuilt binaries for one platform, published beside perception-lm. */
export interface PlatformPackage {
  /** npm name, e.g. `'@perception-lm/linux-x64-gnu'`. */
  name: string;
  /** `process.platform` it runs on (npm's `os` field). */
  os: string;
  /** `process.arch` it runs on (npm's `cpu` field). */
  cpu: string;
  /** The C library it was linked against (npm's `libc` field; Linux only). */
  libc?: 'glibc' | 'musl';
  /** Whether it ships `libplm_cuda.so` (the CUDA backend). */
  cuda: boolean;
}

/**
 * The platform packages perception-lm defines, one per prebuilt platform. scripts/platform-packages.js
 * stages them from this list; their versions always equal perception-lm's.
 */
export const PLATFORM_PACKAGES: readonly PlatformPackage[] = [
  { name: '@perception-lm/linux-x64-gnu', os: 'linux', cpu: 'x64', libc: 'glibc', cuda: true },
  { name: '@perception-lm/linux-arm64-gnu', os: 'linux', cpu: 'arm64', libc: 'glibc', cuda: false },
  { name: '@perception-lm/darwin-arm64', os: 'darwin', cpu: 'arm64', cuda: false },
];

/** File name of the addon inside a platform package. */
export const PLATFORM_ADDON_FILE = 'perception-lm.node';
/** File name of the CUDA library, beside the addon (linux-x64 only). */
export const CUDA_LIBRARY_FILE = 'libplm_cuda.so';
/** Where a source build puts the addon, relative to the package root (CMakeLists.txt, cmake-js). */
export const SOURCE_BUILD_FILE = path.join('build', 'Release', 'perception_lm.node');

/** Operating systems the native core cannot be built for, and why. */
const UNSUPPORTED_OS: Readonly<Record<string, string>> = {
  win32:
    'the native core uses POSIX mmap and dlopen directly, so there is neither a prebuilt binary nor a source ' +
    'build for Windows. Run it under WSL2 (a Linux x64 install, CUDA included with an NVIDIA driver for WSL), ' +
    'or on Linux or macOS',
};

/** The machine a binary is chosen for. */
export interface HostPlatform {
  /** `process.platform`, e.g. `'linux'`. */
  platform: string;
  /** `process.arch`, e.g. `'x64'`. */
  arch: string;
  /** Linux only: the C library (`'glibc'` or `'musl'`). */
  libc?: 'glibc' | 'musl';
}

/**
 * The C library of this Linux process (`undefined` on other systems): glibc when Node reports a glibc
 * runtime version, else musl.
 *
 * @example
 * ```ts
 * detectLibc(); // 'glibc' on Debian, 'musl' on Alpine
 * ```
 */
export function detectLibc(): 'glibc' | 'musl' | undefined {
  if (process.platform !== 'linux') return undefined;
  const report = process.report as (NodeJS.ProcessReport & { excludeNetwork?: boolean }) | undefined;
  if (!report) return 'glibc';
  // The loader may first run inside a server with open sockets: keep the report from resolving their peers.
  const prev = report.excludeNetwork;
  report.excludeNetwork = true;
  try {
    const header = (report.getReport() as { header?: { glibcVersionRuntime?: string } }).header;
    return header?.glibcVersionRuntime ? 'glibc' : 'musl';
  } catch {
    return 'glibc';
  } finally {
    report.excludeNetwork = prev;
  }
}

/**
 * This process's platform: `process.platform`, `process.arch` and, on Linux, the C library.
 *
 * @example
 * ```ts
 * hostPlatform(); // { platform: 'linux', arch: 'x64', libc: 'glibc' }
 * ```
 */
export function hostPlatform(): HostPlatform {
  const libc = detectLibc();
  return libc ? { platform: process.platform, arch: process.arch, libc } : { platform: process.platform, arch: process.arch };
}

/** `linux-x64 (glibc)`, `darwin-arm64`: a platform as messages name it. */
export function describePlatform(host: HostPlatform): string {
  return `${host.platform}-${host.arch}${host.libc ? ` (${host.libc})` : ''}`;
}

/**
 * The platform package whose `os`, `cpu` and `libc` match `host`, or `undefined` when none is published
 * for it.
 *
 * @param host the machine (default: this process, {@link hostPlatform}).
 * @param packages the list to choose from (default {@link PLATFORM_PACKAGES}).
 * @example
 * ```ts
 * selectPlatformPackage({ platform: 'linux', arch: 'x64', libc: 'glibc' })?.name; // '@perception-lm/linux-x64-gnu'
 * selectPlatformPackage({ platform: 'linux', arch: 'x64', libc: 'musl' });        // undefined
 * ```
 */
export function selectPlatformPackage(host: HostPlatform = hostPlatform(), packages: readonly PlatformPackage[] = PLATFORM_PACKAGES): PlatformPackage | undefined {
  return packages.find((p) => p.os === host.platform && p.cpu === host.arch && (p.libc === undefined || p.libc === host.libc));
}

/** Where an addon may come from, in the order they are tried. */
export type AddonSource = 'source-build' | 'platform-package' | 'prebuilds';

/** One place the loader looks at. `file` is undefined when there is nothing to load there. */
export interface AddonCandidate {
  source: AddonSource;
  /** The `.node` file to load, when one exists. */
  file?: string;
  /** The platform package (source 'platform-package'). */
  packageName?: string;
  /** Why there is no file here, when there is none. */
  missing?: string;
}

/** What {@link addonCandidates} needs from the file system (real ones by default; fakes in tests). */
export interface LoaderFs {
  exists(file: string): boolean;
  /** The directory and version of an installed package as Node resolves it from `fromDir`, or undefined. */
  resolvePackage(name: string, fromDir: string): { dir: string; version?: string } | undefined;
  /** node-gyp-build's choice of prebuilt addon under `root`, or undefined. */
  prebuildPath(root: string): string | undefined;
}

/** Maps `.../app.asar/...` to `.../app.asar.unpacked/...` when the unpacked copy exists (Electron). */
export function asarUnpacked(dir: string): string {
  const marker = `${path.sep}app.asar${path.sep}`;
  const i = (dir + path.sep).indexOf(marker);
  if (i < 0) return dir;
  const unpacked = dir.slice(0, i) + `${path.sep}app.asar.unpacked` + dir.slice(i + marker.length - 1);
  try {
    if (fs.existsSync(unpacked)) return unpacked;
  } catch {
    /* fall through */
  }
  return dir;
}

/** The real file system and Node's resolution. */
export const nodeLoaderFs: LoaderFs = {
  exists: (file) => fs.existsSync(file),
  resolvePackage(name, fromDir) {
    let manifest: string;
    try {
      manifest = require.resolve(`${name}/package.json`, { paths: [fromDir] });
    } catch {
      return undefined;
    }
    let version: string | undefined;
    try {
      const v = (JSON.parse(fs.readFileSync(manifest, 'utf8')) as { version?: unknown }).version;
      if (typeof v === 'string') version = v;
    } catch {
      /* no version: not checked */
    }
    return { dir: asarUnpacked(path.dirname(manifest)), version };
  },
  prebuildPath(root) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const ngb = require('node-gyp-build') as { path(dir: string): string };
      return ngb.path(root);
    } catch {
      return undefined;
    }
  },
};

/**
 * The places an addon is looked for, in order (see the file comment). Pure given `fsys`: the unit tests
 * call it with a fake file system for any platform.
 *
 * @param root the perception-lm package directory.
 * @param host the machine (default: this process).
 * @param fsys the file system (default: the real one).
 * @param version perception-lm's version: a platform package of another version is skipped (its addon may
 *   not match this JavaScript). Default: not checked.
 * @example
 * ```ts
 * for (const c of addonCandidates(packageRoot())) console.log(c.source, c.file ?? c.missing);
 * ```
 */
export function addonCandidates(root: string, host: HostPlatform = hostPlatform(), fsys: LoaderFs = nodeLoaderFs, version?: string): AddonCandidate[] {
  const out: AddonCandidate[] = [];
  const built = path.join(root, SOURCE_BUILD_FILE);
  out.push(fsys.exists(built) ? { source: 'source-build', file: built } : { source: 'source-build', missing: `${built} does not exist` });

  const pkg = selectPlatformPackage(host);
  if (!pkg) {
    out.push({ source: 'platform-package', missing: `no platform package is published for ${describePlatform(host)}` });
  } else {
    const found = fsys.resolvePackage(pkg.name, root);
    const file = found === undefined ? undefined : path.join(found.dir, PLATFORM_ADDON_FILE);
    if (found === undefined || file === undefined) {
      out.push({ source: 'platform-package', packageName: pkg.name, missing: `${pkg.name} is not installed` });
    } else if (version !== undefined && found.version !== undefined && found.version !== version) {
      out.push({ source: 'platform-package', packageName: pkg.name, missing: `${pkg.name} is version ${found.version} (in ${found.dir}), perception-lm is ${version}: they must be the same` });
    } else if (!fsys.exists(file)) {
      out.push({ source: 'platform-package', packageName: pkg.name, missing: `${pkg.name} has no ${PLATFORM_ADDON_FILE} (in ${found.dir})` });
    } else {
      out.push({ source: 'platform-package', packageName: pkg.name, file });
    }
  }

  const prebuilt = fsys.prebuildPath(root);
  // node-gyp-build prefers build/Release, which is candidate 1 already.
  if (prebuilt !== undefined && path.resolve(prebuilt) !== path.resolve(built) && !path.resolve(prebuilt).startsWith(path.join(path.resolve(root), 'build') + path.sep)) {
    out.push({ source: 'prebuilds', file: prebuilt });
  } else {
    out.push({ source: 'prebuilds', missing: `no prebuilt addon for ${host.platform}-${host.arch} in ${path.join(root, 'prebuilds')}` });
  }
  return out;
}

/** What the install hints need from perception-lm's package.json. */
export interface PackageHints {
  /** perception-lm's version: a platform package must have the same one. */
  version?: string;
  /** Pinned versions of the build tools, e.g. `{ 'cmake-js': '8.0.0' }`. */
  devDependencies?: Record<string, string>;
}

/** `<root>/package.json`'s version and devDependencies, for install hints. */
export function readPackageHints(root: string): PackageHints {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version?: unknown; devDependencies?: unknown };
    return {
      version: typeof pkg.version === 'string' ? pkg.version : undefined,
      devDependencies: typeof pkg.devDependencies === 'object' && pkg.devDependencies !== null ? (pkg.devDependencies as Record<string, string>) : undefined,
    };
  } catch {
    return {};
  }
}

/**
 * The error for a machine where no addon could be loaded: `ERR_UNSUPPORTED_PLATFORM` on Windows, else
 * `ERR_NATIVE_NOT_FOUND` naming what was tried, the platform packages that exist and how to build from source.
 *
 * @param host the machine.
 * @param tried each candidate and, for files that exist but failed to load, the load error.
 * @param hints perception-lm's version and build-tool versions, for the install commands.
 * @example
 * ```ts
 * throw addonNotFoundError({ platform: 'win32', arch: 'x64' }, []); // ERR_UNSUPPORTED_PLATFORM
 * ```
 */
export function addonNotFoundError(host: HostPlatform, tried: ReadonlyArray<AddonCandidate & { error?: string }>, hints: PackageHints = {}): PlmError {
  const where = describePlatform(host);
  const unsupported = UNSUPPORTED_OS[host.platform];
  if (unsupported) {
    return new PlmError('ERR_UNSUPPORTED_PLATFORM', `perception-lm does not run on ${where}: ${unsupported}. See docs/install.md in the package.`);
  }
  const lines = tried.map((c) => `  - ${c.source}: ${c.file ? `${c.file} failed to load: ${c.error ?? 'unknown error'}` : c.missing}`);
  const pkg = selectPlatformPackage(host);
  const available = PLATFORM_PACKAGES.map((p) => `${p.name} (${p.os}-${p.cpu}${p.libc ? ` ${p.libc}` : ''}${p.cuda ? ', with CUDA' : ''})`).join(', ');
  const fixes: string[] = [];
  if (pkg && tried.some((c) => c.source === 'platform-package' && !c.file)) {
    fixes.push(
      `install the prebuilt binary for this machine: npm install ${pkg.name}${hints.version ? `@${hints.version}` : ''} ` +
        '(npm skips it with --omit=optional or --no-optional, and a lock file made on another platform may lack it)',
    );
  } else if (!pkg) {
    fixes.push(`no prebuilt binary exists for ${where}; the platform packages are ${available}`);
  }
  const tools = ['cmake-js', 'node-addon-api'].map((t) => (hints.devDependencies?.[t] ? `${t}@${hints.devDependencies[t]}` : t)).join(' ');
  fixes.push(
    'build from source: install cmake and a C++17 compiler (Debian/Ubuntu: apt-get install cmake g++; macOS: brew install cmake ' +
      `and xcode-select --install), then in your project: npm install --save-dev ${tools} && ` +
      'PLM_BUILD_FROM_SOURCE=1 npm rebuild perception-lm (in a git checkout: npm run build:native)',
  );
  fixes.push('in Electron, list node_modules/perception-lm/** and node_modules/@perception-lm/** in asarUnpack');
  return new PlmError(
    'ERR_NATIVE_NOT_FOUND',
    `could not load the perception-lm native addon for ${where}. Tried:\n${lines.join('\n')}\nTo fix it:\n${fixes.map((f) => `  - ${f}`).join('\n')}\n(docs/install.md in the package)`,
  );
}

/** A loaded addon and where it came from. */
export interface LoadedAddon<T> {
  addon: T;
  source: AddonSource;
  /** The `.node` file that was loaded. */
  file: string;
}

/**
 * Loads the addon from the first candidate that loads (see {@link addonCandidates}); throws
 * {@link addonNotFoundError}'s `PlmError` when none does.
 *
 * @param root the perception-lm package directory (`packageRoot()`).
 * @param host the machine (default: this process).
 * @param fsys the file system (default: the real one).
 * @param load loads a `.node` file (default: `require`).
 * @example
 * ```ts
 * const { addon, source, file } = loadAddon<NativeAddon>(packageRoot());
 * console.log(`addon from ${source}: ${file}`);
 * ```
 */
export function loadAddon<T>(root: string, host: HostPlatform = hostPlatform(), fsys: LoaderFs = nodeLoaderFs, load: (file: string) => unknown = (f) => require(f)): LoadedAddon<T> {
  const hints = readPackageHints(root);
  if (UNSUPPORTED_OS[host.platform]) throw addonNotFoundError(host, [], hints);
  const tried: Array<AddonCandidate & { error?: string }> = [];
  for (const c of addonCandidates(root, host, fsys, hints.version)) {
    if (!c.file) {
      tried.push(c);
      continue;
    }
    try {
      return { addon: load(c.file) as T, source: c.source, file: c.file };
    } catch (e) {
      tried.push({ ...c, error: e instanceof Error ? e.message : String(e) });
    }
  }
  throw addonNotFoundError(host, tried, hints);
}
