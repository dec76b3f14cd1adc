"""What each dataset's on-disk format fixes: class names in the dataset's own id order, file and folder
names, CSV headers (docs/datasets.md). The readers and the synthetic writers both take them from here, so
a reader always parses exactly what a writer writes."""

from __future__ import annotations

# RAF-DB basic (the list file stores these ids + 1).
RAFDB_CLASS_NAMES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
RAFDB_LIST_FILE = "EmoLabel/list_patition_label.txt"  # sic: the dataset's own spelling
RAFDB_IMAGE_DIR = "Image/aligned"

# AffectNet expression ids 0..7 (the 7-class setting uses 0..6); ids 8, 9, 10 are not expressions.
AFFECTNET_CLASS_NAMES = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")
AFFECTNET_NON_EXPRESSION_NAMES = ("None", "Uncertain", "No-Face")
AFFECTNET_CSV_HEADER = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)
AFFECTNET_CSV_LIST_DIR = "Manually_Annotated_file_lists"
AFFECTNET_CSV_IMAGE_DIR = "Manually_Annotated_Images"

# AI-Hub Korean emotions in the public loaders' order (also the code-point order of the NFC names).
AIHUB_CLASS_NAMES = ("기쁨", "당황", "분노", "불안", "상처", "슬픔", "중립")

# FER2013 and FER+ (FER+ classes in the order of the vote columns of fer2013new.csv).
FER2013_CLASS_NAMES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
FER2013_USAGES = ("Training", "PublicTest", "PrivateTest")
FERPLUS_CLASS_NAMES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
FERPLUS_EXTRA_COLUMNS = ("unknown", "NF")
FERPLUS_HEADER = ("Usage", "Image name", *FERPLUS_CLASS_NAMES, *FERPLUS_EXTRA_COLUMNS)
