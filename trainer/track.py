"""Several people in a video, one tracked identity: MediaPipe pose detections associated over time.

MediaPipe's legacy pose solution finds one person per call. :class:`MultiPoseDetector` finds up to
``max_people`` per frame by asking again with every person found so far masked out (their box filled with the
frame's median colour). :class:`PeopleTracker` associates the detections of consecutive frames into tracks by
position (centre distance relative to the person's height, size ratio, box overlap) and appearance (hue /
saturation histograms of the torso and the legs, Bhattacharyya distance); a track that was lost can be taken up
again by a detection whose appearance clearly matches it and nobody else (re-identification).

For ``posecast prepare --kind dance`` the tracker keeps, per frame, every detection with its track id; the
subject is then one track (``--person N``, or the default: the largest, most central, most often seen), and
the frames where that track is not matched -- or where it overlaps another person so much that MediaPipe's
skeleton may belong to either -- become clip boundaries instead of identity switches.

MediaPipe's single-person model can also merge two people who stand close into one skeleton (a shoulder on one,
the hips on the other) without ever finding either alone, so no overlap of two detections warns. With a person
mask of the frame (:class:`models.detect.PersonSegmenter`: every person in it), :func:`two_people_merged` checks
each skeleton against the mask: body landmarks lying on another person's part of the mask, or the skeleton's own
part of the mask holding somebody no detection accounts for, mark the detection ``merged``.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from models.landmarks import POSE_CONNECTIONS, POSE_INDEX

VISIBILITY = 0.5          # landmarks at least this visible define a person's box
BOX_PAD = 0.12            # box grown by this fraction of its height on every side (limbs, hair, clothes)
HEAD_PAD = 0.12           # extra room above the top landmark, fraction of the height
MAX_CENTER_STEP = 0.6     # association gate: centre distance / person height (per frame, grows with the gap)
MAX_SIZE_RATIO = 1.6      # association gate: height ratio
MAX_APPEARANCE = 0.45     # association gate: Bhattacharyya distance of the appearance histograms
REID_APPEARANCE = 0.3     # a lost track is taken up again by a detection at most this far in appearance ...
REID_MARGIN = 0.1         # ... and this much closer to it than to any other track
MAX_GAP = 45              # frames a lost track stays a candidate for association
CROSSING_OVERLAP = 0.3    # intersection / smaller box area above which two people are "crossing"
CROSSING_MEMORY = 15      # frames an unseen person's predicted box still counts for crossing
HIST_BINS = (12, 6)       # hue x saturation bins
HIST_MOMENTUM = 0.9       # appearance model: exponential moving average of the matched histograms
MIN_TRACK_FRAMES = 5      # tracks seen in fewer frames are not counted as people (spurious detections)
MASK_THRESHOLD = 0.5      # a pixel of the person mask at least this much "person" belongs to someone
MERGE_POINTS = 2          # core joints each side on the mask for a skeleton's left and right to be told apart
TORSO_ON_MASK = 0.5       # ... when its torso lies less than this much on the mask, between the parts
MERGE_AREA = 0.25         # ... or this fraction of its torso's mask part that no detected skeleton accounts for
MERGE_UPPER = 0.15        # ... of which this fraction of the part above its hips
LIMB_WIDTH = 0.1          # a bone's band in body_cover, fraction of the person's height
HEAD_RADIUS = 0.09        # the head's disc in body_cover, fraction of the person's height
COVER_GROW = 0.01         # body_cover grown by this fraction of the frame side (the mask's blur)

_SHOULDERS, _ELBOWS, _HIPS, _KNEES = ((POSE_INDEX[f"left_{j}"], POSE_INDEX[f"right_{j}"])
                                      for j in ("shoulder", "elbow", "hip", "knee"))
_TORSO = [_SHOULDERS[0], _SHOULDERS[1], _HIPS[1], _HIPS[0]]      # the torso's corners, in order round it
_SIDES = tuple([pair[i] for pair in (_SHOULDERS, _ELBOWS, _HIPS, _KNEES)] for i in (0, 1))   # left, right


@dataclasses.dataclass
class Detection:
    landmarks: np.ndarray      # (33, 3) normalised to the source frame (x, y, visibility)
    box: np.ndarray            # (4,) x0, y0, x1, y1 in source pixels
    hist: np.ndarray           # float32 appearance histogram (torso and legs, each L1-normalised)
    track: int = -1            # track id once associated
    crossing: bool = False     # overlaps another person's box (CROSSING_OVERLAP)
    merged: bool = False       # the skeleton spans two people (:func:`two_people_merged`)

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2])


def person_box(landmarks: np.ndarray, width: int, height: int) -> np.ndarray | None:
    """The padded box (x0, y0, x1, y1) in pixels of the visible pose landmarks; None when fewer than 4 are."""
    vis = landmarks[:, 2] >= VISIBILITY
    if vis.sum() < 4:
        return None
    xy = landmarks[vis, :2] * (width, height)
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
    h = max(y1 - y0, 1.0)
    pad = BOX_PAD * h
    return np.array([x0 - pad, y0 - pad - HEAD_PAD * h, x1 + pad, y1 + pad])


def _region_hist(hsv: np.ndarray, pts: np.ndarray, half_width: float) -> np.ndarray:
    """Hue/saturation histogram of the band around the segment chain ``pts`` (pixels), L1-normalised."""
    mask = np.zeros(hsv.shape[:2], np.uint8)
    cv2.polylines(mask, [np.round(pts).astype(np.int32)], False, 255, max(1, int(round(2 * half_width))))
    hist = cv2.calcHist([hsv], [0, 1], mask, list(HIST_BINS), [0, 180, 0, 256]).ravel()
    s = hist.sum()
    return (hist / s if s > 0 else hist).astype(np.float32)


def appearance(rgb: np.ndarray, landmarks: np.ndarray, hsv: np.ndarray | None = None) -> np.ndarray:
    """Appearance histogram of a person: the torso (shoulders to hips) and the upper legs (hips to knees)."""
    h, w = rgb.shape[:2]
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV) if hsv is None else hsv
    p = landmarks[:, :2].astype(np.float64) * (w, h)
    sh, hp, kn = p[list(_SHOULDERS)].mean(0), p[list(_HIPS)].mean(0), p[list(_KNEES)].mean(0)
    half = 0.35 * max(np.linalg.norm(p[_SHOULDERS[0]] - p[_SHOULDERS[1]]), 0.25 * np.linalg.norm(sh - hp), 2.0)
    torso = _region_hist(hsv, np.stack([sh, hp]), half)
    legs = _region_hist(hsv, np.stack([hp, kn]), 0.7 * half)
    return np.concatenate([torso, legs])


def appearance_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Bhattacharyya distance of the torso and leg histograms (0 = same colours, 1 = disjoint)."""
    n = a.size // 2
    d = [cv2.compareHist(a[i:i + n], b[i:i + n], cv2.HISTCMP_BHATTACHARYYA) for i in (0, n)]
    return float(np.mean(d))


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection area / the smaller box's area."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(iw * ih / small) if small > 0 else 0.0


class MultiPoseDetector:
    """Up to ``max_people`` pose detections per frame (MediaPipe, static mode, each person masked after it is
    found). ``extractor``: a :class:`models.detect.LandmarkExtractor` of kind "dance" in static-image mode."""

    def __init__(self, extractor, max_people: int = 4):
        if max_people < 1:
            raise ValueError(f"max_people must be >= 1, got {max_people}")
        self.extractor, self.max_people = extractor, int(max_people)

    def __call__(self, rgb: np.ndarray, people: PersonMask | None = None) -> list[Detection]:
        """The people found in ``rgb``; with ``people`` (the frame's person mask) each is checked for two people
        merged into one skeleton (``Detection.merged``)."""
        h, w = rgb.shape[:2]
        if people is not None and people.labels.shape != (h, w):
            raise ValueError(f"the person mask is {people.labels.shape[1]}x{people.labels.shape[0]}, the frame "
                             f"{w}x{h}: give the mask at the frame's size")
        work = rgb
        fill = np.median(rgb.reshape(-1, 3), axis=0).astype(np.uint8)
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
        out: list[Detection] = []
        for _ in range(self.max_people):
            lm = self.extractor(work)
            if lm is None:
                break
            box = person_box(lm, w, h)
            if box is None:
                break
            if any(overlap(box, d.box) > 0.8 for d in out):  # found the masked person again: stop
                break
            out.append(Detection(lm, box, appearance(rgb, lm, hsv)))
            if len(out) < self.max_people:
                work = work.copy() if work is rgb else work
                x0, y0, x1, y1 = (int(round(v)) for v in (max(box[0], 0), max(box[1], 0), min(box[2], w),
                                                           min(box[3], h)))
                work[y0:y1, x0:x1] = fill
        for i, a in enumerate(out):
            a.crossing = any(overlap(a.box, b.box) > CROSSING_OVERLAP for j, b in enumerate(out) if j != i)
            if people is not None:
                a.merged = two_people_merged(a, [b for b in out if b is not a], people) is not None
        return out


class PersonMask:
    """A frame's person mask (every person in it; (H, W) in [0, 1]) as connected parts, for
    :func:`two_people_merged`. Parts smaller than ``min_area`` (fraction of the frame) are noise, not people."""

    def __init__(self, mask: np.ndarray, min_area: float = 1e-4):
        binary = (np.asarray(mask) >= MASK_THRESHOLD).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        small = stats[:, cv2.CC_STAT_AREA] < min_area * binary.size
        small[0] = True
        labels[small[labels]] = 0
        self.labels, self.areas = labels, stats[:, cv2.CC_STAT_AREA]

    def at(self, xy: np.ndarray) -> np.ndarray:
        """The part label (0: nobody) under each of the (N, 2) positions in pixels, continuous (pixel i covers
        [i, i + 1)); outside the frame, or not finite: 0."""
        h, w = self.labels.shape
        with np.errstate(invalid="ignore"):
            p = np.floor(np.nan_to_num(np.asarray(xy, np.float64), nan=-1.0)).astype(np.int64)
        inside = (p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)
        out = np.zeros(len(p), np.int64)
        out[inside] = self.labels[p[inside, 1], p[inside, 0]]
        return out


def _torso_samples(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel positions along the torso's middle (shoulder centre to hip centre) and its four corners."""
    p = landmarks[:, :2].astype(np.float64) * (width, height)
    sh, hp = p[list(_SHOULDERS)].mean(0), p[list(_HIPS)].mean(0)
    line = sh[None] + np.linspace(0.15, 0.85, 7)[:, None] * (hp - sh)[None]
    return np.concatenate([line, p[list(_SHOULDERS) + list(_HIPS)]])


def body_cover(dets: list[Detection], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: where the skeletons ``dets`` say a body is -- the torso's quadrilateral, every bone as a band
    ``LIMB_WIDTH`` of the person's height wide, the head as a disc -- grown by the mask's blur. What the person
    mask holds outside it is nobody these skeletons account for."""
    h, w = shape
    cover = np.zeros((h, w), np.uint8)
    for d in dets:
        lm = d.landmarks
        with np.errstate(invalid="ignore"):
            vis = (lm[:, 2] >= VISIBILITY) & np.isfinite(lm[:, :2]).all(1)
        p = np.round(np.nan_to_num(lm[:, :2].astype(np.float64)) * (w, h) - 0.5).astype(np.int32)   # pixel centres
        tall = max(d.height / (1 + 2 * BOX_PAD + HEAD_PAD), 1.0)      # the landmarks' own extent
        width = max(2, int(round(LIMB_WIDTH * tall)))
        if vis[_TORSO].all():
            cv2.fillConvexPoly(cover, p[_TORSO], 1)
        for a, b in POSE_CONNECTIONS:
            if vis[a] and vis[b]:
                cv2.line(cover, tuple(map(int, p[a])), tuple(map(int, p[b])), 1, width)
        face = vis[:11]
        if face.any():
            centre = p[:11][face].mean(0)
            cv2.circle(cover, (int(centre[0]), int(centre[1])), max(2, int(round(HEAD_RADIUS * tall))), 1, -1)
    grow = max(1, int(round(COVER_GROW * max(h, w))))
    return cv2.dilate(cover, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)).astype(bool)


def two_people_merged(det: Detection, others: list[Detection], people: PersonMask) -> str | None:
    """Why ``det``'s skeleton is two people rather than one, or None. ``people`` is the frame's person mask in
    parts. ``"limbs on another person"``: its left shoulder, elbow, hip and knee lie on other parts than its right
    ones (at least ``MERGE_POINTS`` on parts each side) and its torso lies mostly off the mask, between them (two
    people apart, one skeleton across both);
    ``"mask holds another person"``: more than ``MERGE_AREA`` of its torso's part, and more than ``MERGE_UPPER`` of
    that part above its hips, is outside what it and every other detection account for (two people touching, one
    skeleton, or one of them never found). None also when the mask cannot tell: its torso on no part (the
    segmentation missed this person), or its hips not visible (a shot from the waist up)."""
    h, w = people.labels.shape
    torso = people.at(_torso_samples(det.landmarks, w, h))
    torso = torso[torso > 0]
    if not torso.size:
        return None
    own = int(np.bincount(torso).argmax())
    sides = []
    for joints in _SIDES:      # (hands and feet may touch somebody else: the core joints decide)
        seen = [j for j in joints if det.landmarks[j, 2] >= VISIBILITY]
        on = people.at(det.landmarks[seen, :2] * (w, h))
        sides.append(on[on > 0])
    quad = det.landmarks[_TORSO]
    if min(len(p) for p in sides) >= MERGE_POINTS and not set(sides[0].tolist()) & set(sides[1].tolist()) \
            and (quad[:, 2] >= VISIBILITY).all():
        # Its left and its right on different people and its torso mostly off the mask between them: two people
        # apart. (One person's mask that broke apart -- at the waist, at a thin arm -- does not split left from
        # right; and a torso on the mask is one person's.)
        inside = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(inside, np.round(quad[:, :2].astype(np.float64) * (w, h) - 0.5).astype(np.int32), 1)
        on = (people.labels[inside.astype(bool)] > 0).mean() if inside.any() else 1.0
        if on < TORSO_ON_MASK:
            return "limbs on another person"
    mine = body_cover([det], (h, w))
    part = people.labels == own
    everyone = mine | body_cover(others, (h, w)) if others else mine
    nobody = part & ~everyone
    if nobody.sum() > MERGE_AREA * people.areas[own]:
        # ... and above its hips too: a segmentation that bleeds into the ground between and around the legs of
        # one person in a lunge leaves as much unaccounted for, but low (a real photo: 35 % of its part, 8 % above
        # the hips); somebody beside it brings a head and shoulders.
        hips = det.landmarks[list(_HIPS)]
        if not ((hips[:, 2] >= VISIBILITY) & np.isfinite(hips[:, 1])).all():
            return None          # no hips to tell a head and shoulders from a bleed around the legs: cannot tell
        top = int(np.clip(round(float(hips[:, 1].mean()) * h), 0, h))
        if nobody[:top].sum() > MERGE_UPPER * max(int(part[:top].sum()), 1):
            return "mask holds another person"
    return None


@dataclasses.dataclass
class Track:
    id: int
    box: np.ndarray
    hist: np.ndarray
    last_frame: int
    velocity: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2))
    frames: list = dataclasses.field(default_factory=list)     # frame indices where it was matched
    heights: list = dataclasses.field(default_factory=list)
    centers: list = dataclasses.field(default_factory=list)

    def predicted_center(self, frame: int) -> np.ndarray:
        c = np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2])
        return c + self.velocity * min(frame - self.last_frame, 5)


class PeopleTracker:
    """Associates per-frame :class:`Detection` lists into tracks (ids 1, 2, ... in order of appearance)."""

    def __init__(self):
        self.tracks: list[Track] = []

    def _cost(self, t: Track, d: Detection, frame: int) -> float | None:
        gap = frame - t.last_frame
        th = max(float(t.box[3] - t.box[1]), 1.0)
        step = float(np.linalg.norm(d.center - t.predicted_center(frame))) / th
        ratio = d.height / th
        app = appearance_distance(t.hist, d.hist)
        if step > MAX_CENTER_STEP * min(gap, 3) or not 1 / MAX_SIZE_RATIO < ratio < MAX_SIZE_RATIO \
                or app > MAX_APPEARANCE:
            return None
        return step + app

    def update(self, frame: int, detections: list[Detection]) -> list[Detection]:
        """Assign ``track`` ids to ``detections`` (greedy by cost; new tracks, or re-identified lost ones, for
        the rest). A skeleton of two people merged is nobody's: it keeps track -1 and moves no track. Returns the
        detections."""
        live = [t for t in self.tracks if frame - t.last_frame <= MAX_GAP]
        pairs = []
        for ti, t in enumerate(live):
            for di, d in enumerate(detections):
                if d.merged:
                    continue
                c = self._cost(t, d, frame)
                if c is not None:
                    pairs.append((c, ti, di))
        used_t, used_d = set(), set()
        for c, ti, di in sorted(pairs):
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            self._match(live[ti], detections[di], frame)
        for di, d in enumerate(detections):
            if di in used_d or d.merged:
                continue
            t = self._reidentify(d, frame, {live[i].id for i in used_t})
            if t is None:
                t = Track(len(self.tracks) + 1, d.box.copy(), d.hist.copy(), frame)
                self.tracks.append(t)
                t.last_frame = frame
            self._match(t, d, frame)
        # A person may hide another one that was just seen nearby (the masked detector cannot find both): a
        # detection overlapping another recent track's predicted box is "crossing" too.
        matched = {d.track for d in detections}
        for t in self.tracks:
            if t.id in matched or frame - t.last_frame > CROSSING_MEMORY:
                continue
            shift = t.velocity * min(frame - t.last_frame, 5)
            pbox = t.box + np.array([shift[0], shift[1], shift[0], shift[1]])
            for d in detections:
                if overlap(d.box, pbox) > CROSSING_OVERLAP:
                    d.crossing = True
        return detections

    def _reidentify(self, d: Detection, frame: int, taken: set[int]) -> Track | None:
        known = [(appearance_distance(t.hist, d.hist), t) for t in self.tracks if len(t.frames) >= MIN_TRACK_FRAMES]
        if not known:
            return None
        known.sort(key=lambda x: x[0])
        best_d, best = known[0]
        other = known[1][0] if len(known) > 1 else 1.0
        if best.id in taken or best.last_frame == frame or best_d > REID_APPEARANCE or other - best_d < REID_MARGIN:
            return None
        return best

    @staticmethod
    def _match(t: Track, d: Detection, frame: int) -> None:
        c_old = np.array([(t.box[0] + t.box[2]) / 2, (t.box[1] + t.box[3]) / 2])
        if t.frames:
            gap = max(frame - t.last_frame, 1)
            t.velocity = 0.5 * t.velocity + 0.5 * (d.center - c_old) / gap
        t.box = d.box.copy()
        if not d.crossing:  # do not learn colours from a box that contains two people
            t.hist = HIST_MOMENTUM * t.hist + (1 - HIST_MOMENTUM) * d.hist if t.frames else d.hist.copy()
        t.last_frame = frame
        t.frames.append(frame)
        t.heights.append(d.height)
        t.centers.append(d.center)
        d.track = t.id

    def people(self, min_frames: int = MIN_TRACK_FRAMES) -> list[Track]:
        """Tracks seen in at least ``min_frames`` frames (the people that count)."""
        return [t for t in self.tracks if len(t.frames) >= min_frames]


def pick_subject(people: list[Track], width: int, height: int, num_frames: int) -> Track:
    """The default subject: the largest (median height), most central, most often seen person."""
    def score(t: Track) -> float:
        cx = float(np.median([c[0] for c in t.centers])) / width
        return len(t.frames) / max(num_frames, 1) * float(np.median(t.heights)) / height * (1.0 - abs(cx - 0.5))
    return max(people, key=score)
