"""The download path: the text split files of the MSPT paper's public repository, pinned to one commit and
checked against the SHA-256 sums below before anything is built from them.

Images, object crops and ``ours_rel2id.json`` are not in that repository's text files: they stay the user's
(``image_dir=``/``crops_dir=``, or a full ``data_dir``).
"""

import hashlib
import os
import posixpath
from dataclasses import dataclass

import datasets

REPOSITORY = "zjunlp/ContinueMKGC"
COMMIT = "6932da178b9015512a683382bdf1351a59c4d8ef"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/{REPOSITORY}"
BASE_URL_ENV = "MSPT_DATA_URL"  # a mirror serving <base>/<commit>/<path> (tests use a local server)

# path in the repository at COMMIT -> SHA-256 of the file's bytes. sep7 and sep-POLM-NEW are not pinned (see
# ``remote_files``): they need data_dir.
SHA256 = {
    "MRE/data/txt/ours_test.txt": "326484ef9d6247690b9005db88e0f57f2e3dcbc15c5227afab70e37d64b42aaf",
    "MRE/data/txt/ours_train.txt": "895a42c6fa8293270d41b0564711c67b32601be1549d781db965b6fc811c9af2",
    "MRE/data/txt/ours_val.txt": "2a54077681bc1c818e31c53d510c9bca7cba71395edde97ae75970d70ed13f37",
    "MRE/data/txt/sep5/ours_test_0.txt": "0b95e8ea3dcbec866c910be142b6c4f32e485ad52db23b546af9a82b0dbf9ae8",
    "MRE/data/txt/sep5/ours_test_1.txt": "59c0c99405962335a9250ecdf762df8eedfdbd788f79ccc790b55b518f8707f0",
    "MRE/data/txt/sep5/ours_test_2.txt": "7fba23327041340933d3f47481933d4685a345c1d4d0b129cc3fc5a7dedd4741",
    "MRE/data/txt/sep5/ours_test_3.txt": "3147b651a47a527ba01662b2b4b18d6a7ed70e1e2db3281cea3ca1b5f5702777",
    "MRE/data/txt/sep5/ours_test_4.txt": "ee8c7c5870052a0f8c16f6de51f6f73227c5a739bdcf7a3672b452a311e2211c",
    "MRE/data/txt/sep5/ours_train_0.txt": "748ed8c01a524de30c57fcc31fd5c83acc46a2a622ffd6318a1b034fa4753d62",
    "MRE/data/txt/sep5/ours_train_1.txt": "55cb319c30d40183ef0d6840a7114d14f8146ba5a88595078d08bad8c7b4a3e1",
    "MRE/data/txt/sep5/ours_train_2.txt": "803793fe31cccd21f604501bb121d6e999b51ec1cf01202ef6755da865267ed7",
    "MRE/data/txt/sep5/ours_train_3.txt": "3c65612504c62156c7335b1684edbfbc7669f4a547d10f91b98083a09442e985",
    "MRE/data/txt/sep5/ours_train_4.txt": "e05336b2358c6d72602c59e6edf801dc201061e6dc4347dc485cbb75e5d4daec",
    "MRE/data/txt/sep5/ours_val_0.txt": "3a6d00d802ead390437b658e5b428856c7ae9a1174625069ffa86ab716422ab4",
    "MRE/data/txt/sep5/ours_val_1.txt": "faa217924f660dcb2bbd9b1593c608fcf4f5bc0afb46187dfb2d17be9bb745b7",
    "MRE/data/txt/sep5/ours_val_2.txt": "6e6e2e51485c44425a9629abc31a6c0b8e650e1eb964566cb54f5776fed59d89",
    "MRE/data/txt/sep5/ours_val_3.txt": "48a93f11fd74ee09b9d44e258a3d439d7b0a11918376d2427ae411bbdcf6cf8a",
    "MRE/data/txt/sep5/ours_val_4.txt": "8f793b6375aa202fd9da6916cdf09416306cdbf7353fc84262fa9545cbad97c2",
    "MRE/data/txt/sep10/ours_test_0.txt": "049ec21c8f30986af2f061d59252379b4e5e8a2147057ca621105b98f345cb1c",
    "MRE/data/txt/sep10/ours_test_1.txt": "5076ab258a04fc009800ba743fefc794195261c053ba89be13a6304a8de82259",
    "MRE/data/txt/sep10/ours_test_2.txt": "be36ce77522ddeaac22bd74f19a4d0064330f24e48cff0f0ceb0858b6c6574b3",
    "MRE/data/txt/sep10/ours_test_3.txt": "0a65f05a4a47dbdc695dfac069826e0e29ebcb0247928fe88ca46691d34d4cff",
    "MRE/data/txt/sep10/ours_test_4.txt": "37c8c22d6472262efb193d0cef390ef018e0eadfe55d292f7c67fce7f81a8d2b",
    "MRE/data/txt/sep10/ours_test_5.txt": "141c2335c0b14c5ede30809e8f558c544e7da62344faa66fcddbe0901dc937cd",
    "MRE/data/txt/sep10/ours_test_6.txt": "602ec74aff94ade7671a1ba07051bed249bf4fda92b3d4e4d7bd4f379f88cd9f",
    "MRE/data/txt/sep10/ours_test_7.txt": "2a54bf4be406cdc591874ae9fadb4307127e944814aaa6ff9c74080e4b674c9f",
    "MRE/data/txt/sep10/ours_test_8.txt": "1e48247dc24ec0c662273da5857bb43ee61925a1edb1b9f9c8afa40a160208f6",
    "MRE/data/txt/sep10/ours_test_9.txt": "1aa257fbaa755f4be7888a1c116d8941ac8875377fb21cc6a1e2113acacfb12d",
    "MRE/data/txt/sep10/ours_train_0.txt": "249014ad883c85206ce6d478df7dabc3cbe3d9d91eb7ac1cc498df68a4e189ec",
    "MRE/data/txt/sep10/ours_train_1.txt": "d7b25d6b2bd55db2017ec2a9c7f6b3e0848cfea9f9cacaf41e15e5cf60957138",
    "MRE/data/txt/sep10/ours_train_2.txt": "61d3cffc25fcf3404f918f8bb5898f61c69c921c326772707ec161c909c173e1",
    "MRE/data/txt/sep10/ours_train_3.txt": "cf9df4684107acf58ffb8f0ebcbfcdab1ff36ceafb66cd58d71ac708e7782221",
    "MRE/data/txt/sep10/ours_train_4.txt": "b829c9566138dd0e8d3e627b7613a0fb260770f56fcc2bc78aab1ecd6c01463c",
    "MRE/data/txt/sep10/ours_train_5.txt": "e31bd25e28c270056eb2f5b6086ca4a7d6a5206e6de4971fc7f28c4db2c59556",
    "MRE/data/txt/sep10/ours_train_6.txt": "28f3159488b520532e8f7fbe4eb2ba217ac7df7a093e34d07e82a2cee1357a39",
    "MRE/data/txt/sep10/ours_train_7.txt": "a285f8a5e458fe1de2a4d559daa90e61f96d8ac8fa353d67429dd5baf23db4cd",
    "MRE/data/txt/sep10/ours_train_8.txt": "7e8f29aa4a1c17f5a137f1c6fc451bdab1ece54180853a6457ce40293bfef50d",
    "MRE/data/txt/sep10/ours_train_9.txt": "b87dfd22448f1c9e859eaee48267700f80abc2db2656590af957b48753503678",
    "MRE/data/txt/sep10/ours_val_0.txt": "a1f127e812a2cbea3efa0e487bc3f5160911c811cbe06182616dca7f04fbbc5b",
    "MRE/data/txt/sep10/ours_val_1.txt": "f7e43c8a35047a781f0559e3ad93bb5d95f9c43c2039d0cfc303231d4b758ac0",
    "MRE/data/txt/sep10/ours_val_2.txt": "6a6b19d260469e3e8c2ff51fcc568ba4633382e212082ee890714acae6160ce8",
    "MRE/data/txt/sep10/ours_val_3.txt": "00a89a7918c3a8f8280139b9d7c77a4ecbeae17fb07396e6e3f2fd14574375d1",
    "MRE/data/txt/sep10/ours_val_4.txt": "5fe0f593d166a41a9e7bf7491da2dd703a1b1193074e2a6053fc4b28487e36b8",
    "MRE/data/txt/sep10/ours_val_5.txt": "736bbce79cf0619bc8a8f8d0ddaf429076fb89080abee0a5d7322cfc273ea324",
    "MRE/data/txt/sep10/ours_val_6.txt": "966230899a6f370680d5657fbdd4e7211ff397233aebc133d2c1aa20fb7edd48",
    "MRE/data/txt/sep10/ours_val_7.txt": "3724d428166545487282644fd6d7ec65d9d50d96134b8b108e51c8312d7afa3e",
    "MRE/data/txt/sep10/ours_val_8.txt": "66df472a206aaab738ddaa72b35c3b7c5e1be8fe464ea798c07c5e30f882fb81",
    "MRE/data/txt/sep10/ours_val_9.txt": "5b481ac5a1b72aded53dbe27565447063571040ad4ddd65fff63c5f25f6e1fd7",
    "MNER/data/twitter2017/sep-PLOM/test_0.txt": "d521f506d312207e3d9111f46d05d1f9796370a4199b5575671149fef7c57471",
    "MNER/data/twitter2017/sep-PLOM/test_1.txt": "c493d4369d3fc6294ea89586d0c2ecf6c2c1f24dc612d8ad09920c453fdd68d8",
    "MNER/data/twitter2017/sep-PLOM/test_2.txt": "c769faa9a0e27794713781571826a9fbbbab7b59134e8bc72b2c6afc3cc3300d",
    "MNER/data/twitter2017/sep-PLOM/test_3.txt": "623e1d736ef05b267b60bd57d242b81fb4198880696af5cf59be943dc2bb688c",
    "MNER/data/twitter2017/sep-PLOM/train_0.txt": "91c973881536c954160ba4b57e745b261f1361768e6c77b5fa7749123094246d",
    "MNER/data/twitter2017/sep-PLOM/train_1.txt": "524dcad91aaf47f36c94cb534025b5f791e776c56027ec1281465fc49cdb730a",
    "MNER/data/twitter2017/sep-PLOM/train_2.txt": "f878b471da79d483526e51414e5f605a60dbfa19987f4e103a42112bd806cf8b",
    "MNER/data/twitter2017/sep-PLOM/train_3.txt": "ad445e684ecb70a3a0ee9f00112b674a037d8b751cd85452f32ce970055d9cae",
    "MNER/data/twitter2017/sep-PLOM/valid_0.txt": "02154522a8dc965116217d40a909ecec6b63705f755e6c81f7d053689245149d",
    "MNER/data/twitter2017/sep-PLOM/valid_1.txt": "bca93e8c0bf39b5043bab11120027241063d3c0b81472f8bde9512821144dfeb",
    "MNER/data/twitter2017/sep-PLOM/valid_2.txt": "4b754e4726d6eafd3bc8fdc363ca30fa482613a31ac718791357844eeb95dac2",
    "MNER/data/twitter2017/sep-PLOM/valid_3.txt": "9e6c7712498e3d6d8259f15b44bf63d854f27506e74bc1a8c19df7ba71a10a91",
}


class ChecksumMismatchError(datasets.exceptions.NonMatchingChecksumError):
    """A downloaded file is not the pinned one. The bad copy has been removed from the download cache."""


@dataclass(frozen=True)
class RemoteFile:
    """A pinned file of the repository: where it lives there, where it is fetched from, and its content hash."""

    path: str
    url: str
    sha256: str


def base_url(configured: str | None = None) -> str:
    """The builder config's ``data_url``, else ``$MSPT_DATA_URL``, else the public repository."""
    return (configured or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def remote_files(folder: str, configured_url: str | None = None) -> dict[str, RemoteFile]:
    """The pinned files directly in the repository folder ``folder``, keyed by file name."""
    base, prefix = base_url(configured_url), folder.rstrip("/") + "/"
    return {
        path[len(prefix):]: RemoteFile(path, f"{base}/{COMMIT}/{path}", digest)
        for path, digest in SHA256.items()
        if path.startswith(prefix) and "/" not in path[len(prefix):]
    }


def remote_file(path: str, configured_url: str | None = None) -> RemoteFile:
    return remote_files(posixpath.dirname(path), configured_url)[posixpath.basename(path)]


def not_pinned_error(benchmark: str, folder: str, data_dir_hint: str) -> ValueError:
    return ValueError(
        f"{benchmark} cannot be downloaded: no file of {REPOSITORY}/{folder}/ (commit {COMMIT[:12]}) has a pinned "
        f"checksum in this package. Fetch the folder yourself and pass data_dir={data_dir_hint!r}."
    )


def download(dl_manager: datasets.DownloadManager, files: list[RemoteFile]) -> dict[str, str]:
    """Fetch ``files`` through ``datasets``' download manager (its cache: a second call makes no request) and
    verify each one. Returns ``{repository path: local path}``.

    A file whose SHA-256 differs is deleted from the download cache, so that a retry fetches it again, and
    ``ChecksumMismatchError`` names the URL and both hashes.
    """
    try:
        local = dl_manager.download({f.path: f.url for f in files})
    except ImportError as err:
        raise ImportError(
            f"downloading the split files needs aiohttp (pip install aiohttp), or pass data_dir: {err}"
        ) from err
    except Exception as err:  # any transport error (fsspec, aiohttp, offline mode) gets the same advice
        raise ConnectionError(
            f"could not download the split files from {files[0].url.rsplit('/' + COMMIT, 1)[0]} "
            f"({type(err).__name__}: {err}). Check the connection or ${BASE_URL_ENV}, or pass data_dir with the files."
        ) from err
    for file in files:
        path = local[file.path]
        actual = sha256(path)
        if actual != file.sha256:
            for leftover in (path, path + ".json", path + ".lock"):
                if os.path.exists(leftover):
                    os.remove(leftover)
            raise ChecksumMismatchError(
                f"checksum mismatch for {file.url}: expected sha256 {file.sha256}, got {actual}. The file was "
                "removed from the download cache; nothing was built. A mirror set with "
                f"${BASE_URL_ENV} must serve the files of commit {COMMIT} byte for byte."
            )
    return local


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
