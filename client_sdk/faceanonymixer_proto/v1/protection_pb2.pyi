import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_WEBP: _ClassVar[ImageFormat]
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
IMAGE_FORMAT_WEBP: ImageFormat

class FaceBox(_message.Message):
    __slots__ = ("left", "top", "right", "bottom")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_FIELD_NUMBER: _ClassVar[int]
    left: int
    top: int
    right: int
    bottom: int
    def __init__(self, left: _Optional[int] = ..., top: _Optional[int] = ..., right: _Optional[int] = ..., bottom: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("decode", "queue", "align", "optimise", "encode", "total")
    DECODE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    ALIGN_FIELD_NUMBER: _ClassVar[int]
    OPTIMISE_FIELD_NUMBER: _ClassVar[int]
    ENCODE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    decode: _duration_pb2.Duration
    queue: _duration_pb2.Duration
    align: _duration_pb2.Duration
    optimise: _duration_pb2.Duration
    encode: _duration_pb2.Duration
    total: _duration_pb2.Duration
    def __init__(self, decode: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., queue: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., align: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., optimise: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., encode: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., total: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ProtectFaceRequest(_message.Message):
    __slots__ = ("image", "key_id", "output_size", "output_format", "paste_back")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    PASTE_BACK_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    key_id: str
    output_size: int
    output_format: ImageFormat
    paste_back: bool
    def __init__(self, image: _Optional[bytes] = ..., key_id: _Optional[str] = ..., output_size: _Optional[int] = ..., output_format: _Optional[_Union[ImageFormat, str]] = ..., paste_back: _Optional[bool] = ...) -> None: ...

class ProtectFaceResponse(_message.Message):
    __slots__ = ("image", "image_format", "key_id", "key_version", "profile_id", "timings", "face_box")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    FACE_BOX_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    image_format: ImageFormat
    key_id: str
    key_version: int
    profile_id: str
    timings: Timings
    face_box: FaceBox
    def __init__(self, image: _Optional[bytes] = ..., image_format: _Optional[_Union[ImageFormat, str]] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., profile_id: _Optional[str] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., face_box: _Optional[_Union[FaceBox, _Mapping]] = ...) -> None: ...

class ProtectFacesRequest(_message.Message):
    __slots__ = ("images", "key_id", "output_size", "output_format", "paste_back")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    PASTE_BACK_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    key_id: str
    output_size: int
    output_format: ImageFormat
    paste_back: bool
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., key_id: _Optional[str] = ..., output_size: _Optional[int] = ..., output_format: _Optional[_Union[ImageFormat, str]] = ..., paste_back: _Optional[bool] = ...) -> None: ...

class ProtectFacesResponse(_message.Message):
    __slots__ = ("index", "status", "image", "image_format", "key_id", "key_version", "profile_id", "timings", "face_box")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    FACE_BOX_FIELD_NUMBER: _ClassVar[int]
    index: int
    status: _status_pb2.Status
    image: bytes
    image_format: ImageFormat
    key_id: str
    key_version: int
    profile_id: str
    timings: Timings
    face_box: FaceBox
    def __init__(self, index: _Optional[int] = ..., status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., image: _Optional[bytes] = ..., image_format: _Optional[_Union[ImageFormat, str]] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., profile_id: _Optional[str] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., face_box: _Optional[_Union[FaceBox, _Mapping]] = ...) -> None: ...
