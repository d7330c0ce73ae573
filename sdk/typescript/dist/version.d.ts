/** The version of this package. */
export declare const VERSION = "0.1.0";
//# sourceMappingURL=version.d.ts.map