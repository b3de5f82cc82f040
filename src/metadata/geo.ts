/** Mean Earth radius (IUGG R1) in km, used by every great-circle distance this service computes. */
export const EARTH_RADIUS_KM = 6371.0088;

const RAD = Math.PI / 180;

/** Great-circle distance in km between two WGS 84 points given in degrees (haversine). */
export function haversineKm(lat1: number, lon1: number, lat2: number, lon2: number): number {
  const dLat = (lat2 - lat1) * RAD;
  const dLon = (lon2 - lon1) * RAD;
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(lat1 * RAD) * Math.cos(lat2 * RAD) * Math.sin(dLon / 2) ** 2;
  return 2 * EARTH_RADIUS_KM * Math.asin(Math.min(1, Math.sqrt(h)));
}

/** A latitude band and one or two longitude intervals (degrees, inclusive) that contain a circle. */
export interface BoundingBox {
  latMin: number;
  latMax: number;
  /** One interval, or two when the circle crosses the ±180° meridian; [-180, 180] when it covers a pole. */
  lonRanges: [number, number][];
}

// About 1 mm: keeps points exactly on the circle inside the box despite rounding.
const MARGIN_DEG = 1e-8;

/**
 * The smallest latitude/longitude box around the circle of `radiusKm` around (lat, lon), for an
 * index prefilter before the exact distance test. A circle that reaches a pole spans every
 * longitude; one that crosses the antimeridian is split into two longitude intervals.
 * (J. P. Matuschek, "Finding Points Within a Distance of a Latitude/Longitude Using Bounding Coordinates".)
 */
export function boundingBox(lat: number, lon: number, radiusKm: number): BoundingBox {
  const angular = radiusKm / EARTH_RADIUS_KM;
  const latMin = lat - angular / RAD - MARGIN_DEG;
  const latMax = lat + angular / RAD + MARGIN_DEG;
  if (latMin <= -90 || latMax >= 90) {
    return { latMin: Math.max(-90, latMin), latMax: Math.min(90, latMax), lonRanges: [[-180, 180]] };
  }
  // The widest longitude offset of the circle (where meridians touch it); < 90° here since no pole is inside.
  const dLon = Math.asin(Math.min(1, Math.sin(angular) / Math.cos(lat * RAD))) / RAD + MARGIN_DEG;
  const lonMin = lon - dLon;
  const lonMax = lon + dLon;
  const lonRanges: [number, number][] = [];
  if (lonMin < -180) lonRanges.push([lonMin + 360, 180], [-180, lonMax]);
  else if (lonMax > 180) lonRanges.push([lonMin, 180], [-180, lonMax - 360]);
  else lonRanges.push([lonMin, lonMax]);
  return { latMin, latMax, lonRanges };
}
