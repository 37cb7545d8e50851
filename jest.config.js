// jest configuration: TypeScript tests under test/ run against lib/ through ts-jest (transpile only;
// `npm run build:ts` does the type check). The native addon is loaded from build/Release (or
// MVEB_ADDON_PATH).
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json' }] },
  testTimeout: 120000,
  maxWorkers: 2,
};
